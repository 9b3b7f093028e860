"""The fast path's output equals the straightforward path's, and costs one round trip."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal

import pg8000.core
import pytest
from sqlalchemy import create_engine

from bench.reference import rows_as_json
from lib.listing import pages as listing
from lib.listing.statements import page_sql
from lib.resource import Resource

COLUMNS = "id,email,name,created_at,active,age,birthday,seen_at,ext_id,prefs,nickname,tags,balance"
ROWS = [
    # name covers escapes, control characters, quotes, emoji, RTL and CJK text
    (
        "plain@example.com",
        "Ada Lovelace",
        "2024-01-01T00:01:00+00:00",
        True,
        36,
        "1815-12-10",
        "2024-01-01T00:01:00",
        "5f0c8f9e-1c1a-4c1e-9a7e-0d7f1c1f0a01",
        '{"theme": "dark", "n": [1, 2]}',
        None,
        "{a,b}",
        "12.50",
    ),
    (
        "zoe@example.com",
        'Zoë "Ω" \\ 山田 \u05e9\u05dc\u05d5\u05dd 🎉\n\t\u0001',
        "2024-02-29T23:59:59.120000+00:00",
        False,
        None,
        None,
        None,
        None,
        None,
        "zo",
        "{}",
        None,
    ),
    (
        "nulls@example.com",
        "N",
        "1999-12-31T22:00:00.000001-02:00",
        None,
        -7,
        "2000-02-29",
        "1970-01-01T00:00:00.5",
        None,
        "null",
        "",
        None,
        "-0.001",
    ),
]


@pytest.fixture
def typed_table(admin):
    cursor = admin.cursor()
    cursor.execute(
        "ALTER TABLE users ADD COLUMN active boolean, ADD COLUMN age int, "
        "ADD COLUMN birthday date, ADD COLUMN seen_at timestamp, ADD COLUMN ext_id uuid, "
        "ADD COLUMN prefs jsonb, "
        "ADD COLUMN nickname text, ADD COLUMN tags text[], ADD COLUMN balance numeric"
    )
    for row in ROWS:
        cursor.execute(
            "INSERT INTO users (email, name, created_at, active, age, birthday, seen_at, ext_id, "
            "prefs, nickname, tags, balance) VALUES (%s, %s, %s::timestamptz, %s, %s, %s::date, "
            "%s::timestamp, %s::uuid, %s::jsonb, %s, %s::text[], %s::numeric)",
            row,
        )
    # An id past 2**53: JSON numbers must carry it exactly.
    cursor.execute(
        "INSERT INTO users (id, email, name) OVERRIDING SYSTEM VALUE "
        "VALUES (9007199254740993, 'big@example.com', 'Big')"
    )
    return admin


def canonical(body: str | bytes) -> list:
    """Parse keeping key order; timestamps compared as instants (PostgreSQL trims trailing
    zeros of fractional seconds: .120000 renders as .12), numbers exactly."""

    def pairs(items: list) -> list:
        out = []
        for key, value in items:
            if key in ("created_at", "seen_at") and isinstance(value, str):
                value = datetime.datetime.fromisoformat(value)
            out.append((key, value))
        return out

    return json.loads(body, object_pairs_hook=pairs, parse_float=Decimal)[0][1]


def test_postgres_rendered_json_equals_the_straightforward_path(typed_table, postgres, make_app):
    client = make_app(USERS_COLUMNS=COLUMNS).test_client()
    fast = client.get("/").data
    engine = create_engine(
        postgres.admin_url.replace("postgresql://", "postgresql+pg8000://").split("?")[0]
    )
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TimeZone = 'UTC'")
        reference = rows_as_json(conn, f"SELECT {COLUMNS} FROM users ORDER BY id")
    engine.dispose()
    assert canonical(fast) == canonical(reference)
    users = json.loads(fast)["users"]
    assert [u["id"] for u in users] == [1, 2, 3, 9007199254740993]
    assert users[1]["name"] == ROWS[1][1]  # every character survived
    assert users[0]["prefs"] == {"theme": "dark", "n": [1, 2]}  # JSON stays JSON, not a string
    assert list(users[0]) == COLUMNS.split(",")


def test_pages_concatenate_to_the_full_listing(admin, make_app, monkeypatch):
    from devtools import seed

    seed.seed_users(admin, 23, progress=False)
    admin.cursor().execute("DELETE FROM users WHERE id % 5 = 0")  # gaps in the keyset
    client = make_app().test_client()
    everything = client.get("/").get_json()["users"]
    for limit in (1, 4, 18, 1000):
        collected, link = [], f"/?limit={limit}"
        for _ in range(100):
            body = client.get(link).get_json()
            collected += body["users"]
            link = body["next"]
            if link is None:
                break
        assert collected == everything
    monkeypatch.setattr(listing, "PAGE_ROWS", 4)  # streamed in pages: same document
    assert client.get("/").get_json()["users"] == everything


def test_a_warm_request_is_one_round_trip(admin, make_app, monkeypatch):
    from devtools import seed

    seed.seed_users(admin, 10, progress=False)
    client = make_app().test_client()
    assert client.get("/").status_code == 200  # first use: connect, check columns
    assert client.get("/?limit=3").status_code == 200  # kept: later ones are the probe alone
    flushes = []
    real_flush = pg8000.core._flush
    monkeypatch.setattr(pg8000.core, "_flush", lambda sock: flushes.append(1) or real_flush(sock))
    for _ in range(5):
        assert client.get("/").status_code == 200
        assert client.get("/?limit=3").status_code == 200
    assert len(flushes) == 10  # one statement each: no BEGIN/ROLLBACK, no ping


def test_without_the_cache_a_request_is_one_round_trip(admin, make_app, monkeypatch):
    from devtools import seed

    seed.seed_users(admin, 10, progress=False)
    client = make_app(RESPONSE_CACHE="off").test_client()
    assert client.get("/").status_code == 200
    flushes = []
    real_flush = pg8000.core._flush
    monkeypatch.setattr(pg8000.core, "_flush", lambda sock: flushes.append(1) or real_flush(sock))
    for _ in range(5):
        assert client.get("/?limit=3").headers["Server-Timing"].endswith("cache;desc=off")
    assert len(flushes) == 5


@pytest.mark.parametrize(("total", "more"), [(6, False), (7, True)])
def test_a_full_last_page_says_whether_one_more_row_follows(admin, make_app, total, more):
    from devtools import seed

    seed.seed_users(admin, total, progress=False)
    client = make_app().test_client()
    first = client.get("/?limit=3").get_json()
    body = client.get(first["next"]).get_json()  # rows 4-6: exactly `limit` rows
    assert [u["id"] for u in body["users"]] == [4, 5, 6]
    assert (body["next"] is not None) is more
    if more:
        last = client.get(body["next"]).get_json()
        assert [u["id"] for u in last["users"]] == [7] and last["next"] is None


def test_a_page_deep_in_the_table_reads_only_the_index_past_its_cursor(admin):
    """The cost of a page must not grow with its cursor: no sequential scan from row one."""
    from devtools import seed

    seed.seed_users(admin, 20_000, progress=False)
    cursor = admin.cursor()
    sql = page_sql(Resource("users", "users", ("id", "email")), after=15_000, limit=100)
    cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
    plan = json.dumps(cursor.fetchone()[0])
    assert "Seq Scan" not in plan
    cursor.execute(sql)
    assert cursor.fetchone()[0::3] == [100, True]
