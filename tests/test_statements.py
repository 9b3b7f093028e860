"""The statements are pure text from (resource, after, limit, budget): checked without a
database. The served table is a value (lib/resource.py): every name derives from it."""

from __future__ import annotations

import enum
from dataclasses import replace

import pytest

from lib import config
from lib.errors import ConfigError
from lib.listing.statements import check_columns, columns_sql, literal, page_sql
from lib.resource import Resource

USERS = Resource("users", "users", ("id", "email", "name", "created_at"), "id")
TEAMS = Resource("teams", "teams", ("id", "name"), "id")

# The statement as the function has always sent it: a change here is a change on the wire.
USERS_PAGE = (
    "SELECT count(*), max(page.id), "
    "coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY page.id), ''), "
    "(SELECT p.id FROM users p WHERE p.id > max(page.id) ORDER BY p.id LIMIT 1) IS NOT NULL "
    'FROM (SELECT "id", "email", "name", "created_at" FROM users WHERE id > 0 '
    "ORDER BY id LIMIT 5000) AS page, "
    'LATERAL (SELECT page."id", page."email", page."name", page."created_at") AS r'
)
TENANT_PAGE = (  # DATABASE_URL's schema; `id` selected for the keyset but not served
    "SELECT count(*), max(page.id), "
    "coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY page.id), ''), "
    '(SELECT p.id FROM "tenant_a"."users" p WHERE p.id > max(page.id) ORDER BY p.id LIMIT 1) '
    'IS NOT NULL FROM (SELECT "id", "name", "email" FROM "tenant_a"."users" WHERE id > 15000 '
    'ORDER BY id LIMIT 100) AS page, LATERAL (SELECT page."name", page."email") AS r'
)


def test_the_users_page_statement_is_the_one_the_function_sends():
    assert page_sql(USERS, 0, 5000) == USERS_PAGE
    tenant = Resource("users", "users", ("name", "email"), schema="tenant_a")
    assert page_sql(tenant, 15_000, 100) == TENANT_PAGE


def test_another_table_is_the_same_statement_on_its_own_names():
    same_columns = Resource("users", "users", TEAMS.columns)
    assert page_sql(TEAMS, 3, 2) == page_sql(same_columns, 3, 2).replace("users", "teams")
    keyed = Resource("events", "event_log", ("kind",), key="seq", schema="audit")
    sql = page_sql(keyed, 9, 10)
    assert 'FROM "audit"."event_log" WHERE seq > 9 ORDER BY seq LIMIT 10' in sql
    assert 'SELECT "seq", "kind" FROM' in sql and 'LATERAL (SELECT page."kind") AS r' in sql


def test_the_columns_statement_reads_the_catalog_of_the_table_as_written():
    assert columns_sql(USERS) == (
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('users') "
        "AND attnum > 0 AND NOT attisdropped"
    )
    assert 'to_regclass(\'"tenant_a"."teams"\')' in columns_sql(replace(TEAMS, schema="tenant_a"))


class Color(enum.IntEnum):
    RED = 1

    def __str__(self) -> str:
        return "1; DROP TABLE users"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-7, "-7"),
        (2**63 - 1, "9223372036854775807"),
        (Color.RED, "1"),  # an int subclass renders as its value, not as its str()
        ("email", '"email"'),
        ("Mixed Case", '"Mixed Case"'),
        ('a"b', '"a""b"'),  # a double quote inside is doubled: the name cannot end early
        ("", '""'),
    ],
)
def test_literal_renders_ints_as_digits_and_strings_as_quoted_identifiers(value, text):
    assert literal(value) == text


@pytest.mark.parametrize("value", [True, 1.5, None, b"id", ["id"], ("id",)])
def test_literal_refuses_anything_else(value):
    with pytest.raises(TypeError):
        literal(value)


@pytest.mark.parametrize("after", ["0; DROP TABLE users", 1.0, True, None])
def test_a_page_takes_only_ints(after):
    with pytest.raises(TypeError):
        page_sql(USERS, after, 10)
    with pytest.raises(TypeError):
        page_sql(USERS, 0, after)
    if after is not None:  # None: no budget
        with pytest.raises(TypeError):
            page_sql(USERS, 0, 10, budget=after)


def test_the_columns_check_names_the_resources_setting():
    check_columns(USERS, {"id", "email", "name", "created_at", "password_hash"})
    with pytest.raises(ConfigError) as missing_table:
        check_columns(USERS, set())
    assert str(missing_table.value) == (
        "USERS_COLUMNS: table 'users' does not exist or has no columns"
    )
    assert missing_table.value.variable == "USERS_COLUMNS"
    with pytest.raises(ConfigError, match=r"^USERS_COLUMNS: column 'name' does not exist in"):
        check_columns(USERS, {"id", "email", "created_at"})
    with pytest.raises(ConfigError) as no_key:  # the key is needed even when not served
        check_columns(Resource("users", "users", ("email",), schema="tenant_a"), {"email"})
    assert str(no_key.value) == (
        "USERS_COLUMNS: column 'id' does not exist in table '\"tenant_a\".\"users\"'"
    )
    with pytest.raises(ConfigError, match=r"^TEAMS_COLUMNS: column 'name' does not exist in"):
        check_columns(TEAMS, {"id"})


def test_every_name_derives_from_the_resource():
    assert (USERS.columns_setting, TEAMS.columns_setting) == ("USERS_COLUMNS", "TEAMS_COLUMNS")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "Users"},
        {"table": 'users"; DROP TABLE users; --'},
        {"table": "public.users"},
        {"key": "id desc"},
        {"columns": ("id", "e-mail")},
        {"columns": ()},
        {"columns": ("id", "id")},
        {"schema": "Tenant"},
    ],
)
def test_a_resource_holds_only_plain_names(fields):
    with pytest.raises(ValueError):
        Resource(**{"name": "users", "table": "users", "columns": ("id",), **fields})


def test_settings_build_the_one_served_resource():
    url = "postgresql://u:p@h/db?sslmode=disable"
    settings = config.load({"DATABASE_URL": url})
    assert settings.resource == Resource("users", "users", config.DEFAULT_COLUMNS, "id")
    assert settings.columns == config.DEFAULT_COLUMNS and settings.resource.schema is None
    chosen = config.load({"DATABASE_URL": url + "&schema=tenant_a", "USERS_COLUMNS": "name,id"})
    assert chosen.resource == Resource("users", "users", ("name", "id"), "id", "tenant_a")
    with pytest.raises(ConfigError, match=r"^USERS_COLUMNS: lists a column twice$"):
        config.load({"DATABASE_URL": url, "USERS_COLUMNS": "id,id"})
