"""lib/listing/fingerprint.py against a real PostgreSQL: every change that could change a
page's bytes gives a new fingerprint; what cannot change them (other tables, VACUUM FULL,
CLUSTER) does not change the content hash."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pg8000.dbapi
import pytest

from devtools import seed
from lib.listing import fingerprint, statements
from lib.resource import Resource
from tests.conftest import run_python

USERS = Resource("users", "users", ("id", "email", "name", "created_at"))
SEED = fingerprint.new_seed()
AFTER, LIMIT = 5, 5  # the page: ids 6..10 of 20, rows follow

Build = Callable[[Resource, int, int, int], str]
ALL: dict[str, Build] = {
    "content": fingerprint.content_sql,
    "rendered": fingerprint.rendered_sql,
    "tuples": fingerprint.tuples_sql,
}


def value(conn: pg8000.dbapi.Connection, sql: str) -> object:
    cursor = conn.cursor()
    cursor.execute(sql)
    [row] = cursor.fetchall()
    return row[0]


def run(conn: pg8000.dbapi.Connection, *sqls: str) -> None:
    cursor = conn.cursor()
    for sql in sqls:
        cursor.execute(sql)


def prints(
    conn: pg8000.dbapi.Connection, after: int = AFTER, limit: int = LIMIT
) -> dict[str, object]:
    """Every kind's fingerprint of the page, and the page's render itself."""
    out = {name: value(conn, build(USERS, after, limit, SEED)) for name, build in ALL.items()}
    cursor = conn.cursor()
    cursor.execute(statements.page_sql(USERS, after, limit))
    out["render"] = cursor.fetchall()
    return out


@pytest.fixture
def users(admin: pg8000.dbapi.Connection) -> pg8000.dbapi.Connection:
    """20 users; rows 1-3 deleted and the table vacuumed, so a rewrite moves the page's rows
    (their ctids change under VACUUM FULL and CLUSTER)."""
    seed.seed_users(admin, 20, progress=False)
    run(admin, "SET TimeZone = 'UTC'", "DELETE FROM users WHERE id <= 3", "VACUUM users")
    return admin


def changed(before: dict[str, object], after: dict[str, object]) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def insert_sql(id_: int, email: str = "new@example.com") -> str:
    return (
        "INSERT INTO users (id, email, name, created_at) OVERRIDING SYSTEM VALUE "
        f"VALUES ({id_}, '{email}', 'New', '2024-02-01T00:00:00Z')"
    )


EVERY = {"content", "rendered", "tuples", "render"}
CHANGES = {
    # A row moving into the page (id 8 gone, then back with other content).
    "delete: a row leaves the page, the next row moves in": (
        ["DELETE FROM users WHERE id = 8"],
        EVERY,
    ),
    "update, HOT (name is not indexed)": (
        ["UPDATE users SET name = 'Renamed' WHERE id = 7"],
        EVERY,
    ),
    "update, not HOT (email is indexed)": (
        ["UPDATE users SET email = 'moved@example.com' WHERE id = 7"],
        EVERY,
    ),
    "two rows swap their emails": (
        [
            "UPDATE users SET email = 'tmp@example.com' WHERE id = 6",
            "UPDATE users SET email = 'user6@example.com' WHERE id = 7",
            "UPDATE users SET email = 'user7@example.com' WHERE id = 6",
        ],
        EVERY,
    ),
    "truncate": (["TRUNCATE users"], EVERY),
    "a served column retyped without a rewrite (timestamptz to timestamp under UTC)": (
        ["ALTER TABLE users ALTER COLUMN created_at TYPE timestamp"],
        EVERY,
    ),
    # The content hash keeps a no-op update a hit: the bytes are the same.
    "no-op update (the same values written again)": (
        ["UPDATE users SET name = name WHERE id = 7"],
        {"tuples"},
    ),
    "VACUUM FULL": (["VACUUM FULL users"], {"tuples"}),
    "CLUSTER": (["CLUSTER users USING users_pkey"], {"tuples"}),
    "another table written": (
        ["CREATE TABLE IF NOT EXISTS elsewhere (n int)", "INSERT INTO elsewhere VALUES (1)"],
        set(),
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_class(users, change):
    """What each change changes: the page's render, and which fingerprints follow it."""
    sqls, expected = CHANGES[change]
    if change == "CLUSTER":  # rows out of key order first, so CLUSTER moves them
        run(users, "UPDATE users SET email = email || '' WHERE id BETWEEN 6 AND 10")
    before = prints(users)
    run(users, *sqls)
    assert changed(before, prints(users)) == expected


def test_the_content_hash_changes_whenever_the_render_does(users):
    """The render changing and the content hash not changing would be a stale byte: never,
    over every class above in turn, on one table."""
    for change, (sqls, _) in CHANGES.items():
        if change in ("truncate",):
            continue
        before = prints(users)
        run(users, *sqls)
        after = prints(users)
        if before["render"] != after["render"]:
            assert before["content"] != after["content"], change
            assert before["rendered"] != after["rendered"], change


def test_hot_and_non_hot_updates_are_what_they_say(users):
    """The two update cases really are HOT and not HOT (pg_stat_user_tables)."""

    def hot() -> tuple[int, int]:
        run(users, "SELECT pg_stat_force_next_flush()")
        [row] = [
            value(
                users,
                "SELECT ARRAY[n_tup_upd, n_tup_hot_upd]::text FROM "
                "pg_stat_user_tables WHERE relname = 'users'",
            )
        ]
        upd, hot_upd = (int(v) for v in str(row).strip("{}").split(","))
        return upd, hot_upd

    start = hot()
    run(users, "UPDATE users SET name = 'Renamed' WHERE id = 7")
    after_hot = hot()
    run(users, "UPDATE users SET email = 'moved@example.com' WHERE id = 7")
    after_cold = hot()
    assert after_hot[0] - start[0] == 1 and after_hot[1] - start[1] == 1
    assert after_cold[0] - after_hot[0] == 1 and after_cold[1] == after_hot[1]


def test_a_row_moving_into_the_page(users):
    run(users, "DELETE FROM users WHERE id = 8")
    before = prints(users)
    run(users, insert_sql(8))
    assert changed(before, prints(users)) == EVERY


def test_a_row_appearing_and_vanishing_past_the_pages_end(users):
    """The last page (16..20) has no `next`; a row 21 sets it, and only that changes."""
    before = prints(users, 15, 5)
    assert before["render"][0][3] is False
    run(users, insert_sql(21))
    appeared = prints(users, 15, 5)
    assert appeared["render"][0][3] is True and appeared["render"][0][:3] == before["render"][0][:3]
    assert changed(before, appeared) == EVERY
    run(users, "DELETE FROM users WHERE id = 21")
    vanished = prints(users, 15, 5)
    assert changed(appeared, vanished) == EVERY
    assert {k: vanished[k] for k in ("content", "rendered", "render")} == {
        k: before[k] for k in ("content", "rendered", "render")
    }  # the same rows again: the same content fingerprint (a hit), tuples aside


def test_an_insert_into_the_page_and_an_insert_elsewhere(users):
    """A row inserted into an empty page changes it; one past another page's end changes
    only that page's `next`, not a page before it."""
    before_empty = prints(users, 100, 5)
    before_first = prints(users, 0, 5)
    run(users, insert_sql(101))
    assert changed(before_empty, prints(users, 100, 5)) == EVERY
    assert changed(before_first, prints(users, 0, 5)) == set()


def test_the_same_rows_and_seed_give_the_same_fingerprint_and_another_seed_another(users):
    sql = fingerprint.content_sql(USERS, AFTER, LIMIT, SEED)
    assert value(users, sql) == value(users, sql)
    other = fingerprint.content_sql(USERS, AFTER, LIMIT, fingerprint.new_seed())
    assert value(users, other) != value(users, sql)


def test_nulls_are_told_apart_from_values_and_from_each_others_place(admin):
    things = Resource("things", "things", ("id", "a", "b"))
    run(
        admin,
        "DROP TABLE IF EXISTS things",
        "CREATE TABLE things (id int8 PRIMARY KEY, a text, b text)",
    )
    seen = {}
    for a, b in (("NULL", "NULL"), ("NULL", "'x'"), ("'x'", "NULL"), ("''", "''"), ("'x'", "'x'")):
        run(admin, "TRUNCATE things", f"INSERT INTO things VALUES (1, {a}, {b})")
        for name in ("content", "rendered"):
            seen[(name, a, b)] = value(admin, ALL[name](things, 0, 10, SEED))
    for name in ("content", "rendered"):
        values = [v for (n, *_), v in seen.items() if n == name]
        assert len(set(values)) == len(values), name


def test_numeric_scale_is_why_the_record_hash_is_not_exact_for_every_type(admin):
    """1.50 and 1.5 are equal numerics with equal hashes, and render differently: the content
    hash misses it, exact_types_sql refuses the type, the rendered hash catches it."""
    prices = Resource("prices", "prices", ("id", "price"))
    run(
        admin,
        "DROP TABLE IF EXISTS prices",
        "CREATE TABLE prices (id int8 PRIMARY KEY, price numeric)",
    )
    run(admin, "INSERT INTO prices VALUES (1, 1.50)")
    content = fingerprint.content_sql(prices, 0, 10, SEED)
    rendered = fingerprint.rendered_sql(prices, 0, 10, SEED)
    before = (value(admin, content), value(admin, rendered))
    run(admin, "UPDATE prices SET price = 1.5")
    assert value(admin, content) == before[0]  # why numeric is not in EXACT_TYPES
    assert value(admin, rendered) != before[1]
    assert value(admin, fingerprint.exact_types_sql(prices)) is False
    assert value(admin, fingerprint.exact_types_sql(USERS)) is True


def test_a_nondeterministic_collation_is_not_exact(admin):
    try:
        run(
            admin,
            "CREATE COLLATION IF NOT EXISTS fp_ci (provider = icu, "
            "locale = 'und-u-ks-level2', deterministic = false)",
        )
    except pg8000.dbapi.DatabaseError as exc:  # a PostgreSQL built without ICU
        pytest.skip(f"no ICU collation here: {exc}")
    run(admin, "ALTER TABLE users ALTER COLUMN name TYPE text COLLATE fp_ci")
    assert value(admin, fingerprint.exact_types_sql(USERS)) is False


def test_a_schema_qualified_table(admin, postgres):
    run(admin, "DROP SCHEMA IF EXISTS fp CASCADE", "CREATE SCHEMA fp")
    run(admin, "CREATE TABLE fp.users (LIKE public.users INCLUDING ALL)")
    run(admin, "INSERT INTO fp.users (email, name) VALUES ('a@example.com', 'A')")
    for build in ALL.values():
        assert str(value(admin, build(replace(USERS, schema="fp"), 0, 10, SEED))).startswith("1:")
    assert value(admin, fingerprint.exact_types_sql(replace(USERS, schema="fp"))) is True
    run(admin, "DROP SCHEMA fp CASCADE")


@pytest.mark.slow  # two interpreters, each forking
def test_two_processes_draw_different_seeds_and_a_fork_draws_again():
    code = (
        "import os\n"
        "from lib.listing import fingerprint\n"
        "parent = fingerprint.process_seed()\n"
        "assert fingerprint.process_seed() == parent\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(w, str(fingerprint.process_seed()).encode()); os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(parent, os.read(r, 100).decode())\n"
    )
    first, second = (run_python(code, {"PYTHONPATH": "."}).split() for _ in range(2))
    seeds = {int(s) for s in (*first, *second)}
    assert len(seeds) == 4 and all(-(2**63) <= s < 2**63 for s in seeds)


def test_only_ints_reach_the_statement():
    with pytest.raises(TypeError):
        fingerprint.content_sql(USERS, "0; DROP TABLE users", 10, SEED)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fingerprint.rendered_sql(USERS, 0, 10, True)
    with pytest.raises(ValueError, match="bigint"):
        fingerprint.tuples_sql(USERS, 0, 10, 2**63)
