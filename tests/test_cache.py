"""The exact-validator response cache against a real PostgreSQL: what it serves, when it
renders, and that a cached body is the very bytes a fresh render gives (docs/cache.md)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from devtools import seed
from lib import config
from lib.errors import ConfigError
from lib.listing import cache
from lib.listing import pages as listing
from lib.listing.cache import Entry, ResponseCache
from tests.conftest import insert_users
from tests.logs import request_line

MIGRATION = Path(__file__).resolve().parents[1] / "sql" / "cache_version.sql"
GZIP = {"Accept-Encoding": "gzip"}
ROWS = [(f"u{n}@example.com", f"User {n}", "2024-01-01T00:00:00Z") for n in range(3)]


def cache_of(response) -> str:
    """hit, miss, skip or off: what the response's Server-Timing says the cache did."""
    return response.headers["Server-Timing"].rsplit("cache;desc=", 1)[1]


@pytest.fixture
def other_table(admin):
    admin.cursor().execute("DROP TABLE IF EXISTS elsewhere; CREATE TABLE elsewhere (n int)")
    yield lambda: admin.cursor().execute("INSERT INTO elsewhere VALUES (1)")
    admin.cursor().execute("DROP TABLE IF EXISTS elsewhere")


@pytest.fixture
def version_trigger(admin):
    admin.cursor().execute(MIGRATION.read_text())
    yield
    admin.cursor().execute(
        "DROP TABLE IF EXISTS users_version; DROP FUNCTION IF EXISTS users_version_bump() CASCADE"
    )


@pytest.mark.parametrize("path", ["/?limit=40", "/?limit=40&cursor=aWQ6MTA", "/"])
@pytest.mark.parametrize("headers", [{}, GZIP], ids=["raw", "gzip"])
def test_a_cached_body_is_byte_identical_to_a_fresh_render(admin, make_app, path, headers):
    seed.seed_users(admin, 120, progress=False)
    fresh = make_app(RESPONSE_CACHE="off").test_client().get(path, headers=headers)
    client = make_app().test_client()
    first, second = client.get(path, headers=headers), client.get(path, headers=headers)
    assert (cache_of(fresh), cache_of(first), cache_of(second)) == ("off", "miss", "hit")
    assert second.data == first.data == fresh.data
    assert second.headers.get("Content-Encoding") == fresh.headers.get("Content-Encoding")
    assert second.headers.get("Link") == fresh.headers.get("Link")
    assert second.headers["ETag"] == first.headers["ETag"]
    if headers:
        assert second.headers["Content-Encoding"] == "gzip" and gzip.decompress(second.data)


def test_a_hit_costs_the_probe_alone_and_a_write_renders_at_once(admin, make_app, capsys):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    client.get("/")  # finds the validator
    capsys.readouterr()
    client.get("/?limit=10")  # no entry for this request yet: no probe, the render alone
    assert request_line(capsys.readouterr().out)["queries"] == 1
    assert cache_of(client.get("/?limit=10")) == "hit"
    assert request_line(capsys.readouterr().out)["queries"] == 1
    insert_users(admin, [("new@example.com", "New", "2024-05-01T00:00:00Z")])
    response = client.get("/?limit=10")
    assert cache_of(response) == "miss" and b"new@example.com" in response.data


def test_a_pre_write_etag_gets_200_with_the_new_body_and_the_current_one_304(
    admin, make_app, capsys
):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    for path in ("/?limit=10", "/"):
        old = client.get(path)
        insert_users(admin, [(f"w{len(path)}@example.com", "W", "2024-05-01T00:00:00Z")])
        response = client.get(path, headers={"If-None-Match": old.headers["ETag"]})
        assert response.status_code == 200 and response.data != old.data
        assert f"w{len(path)}@example.com".encode() in response.data
        capsys.readouterr()
        current = client.get(path, headers={"If-None-Match": response.headers["ETag"]})
        assert current.status_code == 304 and current.headers["ETag"] == response.headers["ETag"]
        assert request_line(capsys.readouterr().out)["queries"] == 1  # the probe, no render


def test_the_etag_is_the_same_on_another_instance_and_its_304_renders_nothing(
    admin, make_app, capsys
):
    insert_users(admin, ROWS)
    tag = make_app().test_client().get("/?limit=10").headers["ETag"]
    other = make_app().test_client()  # another process's cache: empty
    capsys.readouterr()
    response = other.get("/?limit=10", headers={"If-None-Match": tag})
    assert response.status_code == 304 and response.headers["ETag"] == tag
    assert request_line(capsys.readouterr().out)["rows"] == 0


def test_a_write_to_another_table_invalidates_the_snapshot(admin, make_app, other_table):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    client.get("/?limit=10")
    other_table()
    assert cache_of(client.get("/?limit=10")) == "miss"
    assert cache_of(client.get("/?limit=10")) == "hit"


def test_the_trigger_validator_ignores_other_tables_and_sees_every_write_to_users(
    admin, make_app, other_table, version_trigger
):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    assert client.get("/healthz").get_json()["cache"]["validators"] == {}
    client.get("/?limit=10")
    assert client.get("/healthz").get_json()["cache"]["validators"] == {"users": "trigger"}
    other_table()
    assert cache_of(client.get("/?limit=10")) == "hit"
    cursor = admin.cursor()
    for n, write in enumerate(
        [
            "INSERT INTO users (email, name, created_at) VALUES ('t@x', 'T', now())",
            "UPDATE users SET name = 'renamed' WHERE email = 't@x'",
            "DELETE FROM users WHERE email = 't@x'",
            "TRUNCATE users",
        ]
    ):
        before = client.get("/?limit=10")
        cursor.execute(write)
        after = client.get("/?limit=10")
        assert cache_of(after) == "miss", write
        fresh = make_app(RESPONSE_CACHE="off").test_client().get("/?limit=10")
        assert after.data == fresh.data and (n == 3 or after.data != before.data), write
    cursor.execute("ALTER TABLE users DISABLE TRIGGER users_version_bump")
    client.get("/?limit=10")
    assert cache_of(client.get("/?limit=10")) == "miss"  # no trigger: never served from memory


def test_the_trigger_validator_sees_a_retype_that_rewrites_nothing(
    admin, make_app, version_trigger
):
    """Under UTC, timestamptz -> timestamp rewrites no row and no pg_class row, and bumps no
    version row, yet every created_at renders differently: the served columns' types are
    part of the trigger's token."""
    insert_users(admin, ROWS)
    client = make_app(PGTZ="UTC").test_client()
    client.get("/?limit=10")
    before = client.get("/?limit=10")
    assert cache_of(before) == "hit"
    admin.cursor().execute(
        "SET TimeZone = 'UTC'; ALTER TABLE users ALTER COLUMN created_at TYPE timestamp"
    )
    after = client.get("/?limit=10")
    assert cache_of(after) == "miss" and after.data != before.data
    assert b"+00:00" in before.data and b"+00:00" not in after.data


def test_probes_are_skipped_while_they_miss_and_resume_when_they_would_hit(
    admin, make_app, other_table
):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    seen = []
    for _ in range(cache.MIN_SEEN + 4):  # a write elsewhere before every request
        other_table()
        seen.append(cache_of(client.get("/?limit=10")))
    assert seen[: cache.MIN_SEEN] == ["miss"] * cache.MIN_SEEN and seen[-1] == "skip"
    assert client.get("/healthz").get_json()["cache"]["probing"] is False
    quiet = [cache_of(client.get("/?limit=10")) for _ in range(cache.MIN_SEEN)]
    assert quiet[0] == "skip" and quiet[-1] == "hit"  # renders showed the probe would hit


def test_a_role_that_may_not_read_the_server_identity_turns_the_cache_off(
    admin, make_app, postgres, capsys
):
    insert_users(admin, ROWS)
    cursor = admin.cursor()
    cursor.execute("DROP ROLE IF EXISTS cache_reader; CREATE ROLE cache_reader LOGIN PASSWORD 'pw'")
    cursor.execute("GRANT SELECT ON users TO cache_reader")
    cursor.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        client = make_app(DATABASE_URL=postgres.url("cache_reader", "pw")).test_client()
        response = client.get("/?limit=10")
        assert response.status_code == 200 and cache_of(response) == "off"
        out = capsys.readouterr().out
        assert "response cache off" in out and "pg_control_system()" in out
        health = client.get("/healthz").get_json()["cache"]
        assert health["enabled"] is False and "GRANT EXECUTE" in health["off"]
    finally:
        cursor.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
        cursor.execute("DROP OWNED BY cache_reader; DROP ROLE cache_reader")


def test_a_listing_of_several_pages_is_cached_whole_and_answers_304(
    admin, make_app, monkeypatch, capsys
):
    monkeypatch.setattr(listing, "PAGE_ROWS", 40)
    seed.seed_users(admin, 200, progress=False)
    client = make_app().test_client()
    first = client.get("/")
    tag = first.headers["ETag"]
    assert not tag.startswith("W/")  # one snapshot: strong
    assert len(json.loads(first.data)["users"]) == 200
    capsys.readouterr()
    again = client.get("/")
    assert again.data == first.data and again.headers["ETag"] == tag
    assert request_line(capsys.readouterr().out)["cache"] == "hit"
    capsys.readouterr()
    same = client.get("/", headers={"If-None-Match": tag})
    assert same.status_code == 304 and same.headers["ETag"] == tag
    assert request_line(capsys.readouterr().out)["rows"] == 0
    insert_users(admin, [("late@example.com", "Late", "2024-05-01T00:00:00Z")])
    changed = client.get("/", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and b"late@example.com" in changed.get_data()
    assert changed.headers["ETag"] != tag


def test_healthz_reports_the_cache_bytes_and_hit_rate(admin, make_app):
    insert_users(admin, ROWS)
    client = make_app(RESPONSE_CACHE_MB="2").test_client()
    body = client.get("/?limit=10").data
    client.get("/?limit=10")
    health = client.get("/healthz").get_json()["cache"]
    assert health["max_bytes"] == 2 * 2**20 and health["entries"] == 1
    assert health["bytes"] == len(body) + cache.ENTRY_OVERHEAD
    assert (health["hits"], health["misses"], health["recent_hit_rate"]) == (1, 0, 1.0)


def test_the_lru_stays_within_its_bytes_and_keeps_nothing_bigger():
    lru = ResponseCache(max_bytes=3 * (1000 + cache.ENTRY_OVERHEAD))
    a, b, c, d, big = ((server, shape) for server, shape in zip("SSSTS", "abcde", strict=True))
    for key in (a, b, c):
        lru.rendered(key, Entry("t", b"x" * 1000))
    assert lru.get(a, "t") is not None  # now the most recent
    lru.rendered(d, Entry("t", b"x" * 1000))
    assert lru.get(b, "t") is None and lru.get(a, "t") is not None
    assert not lru.holds("b") and lru.holds("d")
    assert lru.get(a, "other token") is None
    lru.rendered(big, Entry("t", b"x" * 5000))
    assert lru.get(big, "t") is None and not lru.holds("e")
    assert lru.health()["bytes"] <= lru.max_bytes


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RESPONSE_CACHE": "maybe"}, "RESPONSE_CACHE"),
        ({"RESPONSE_CACHE_MB": "0"}, "RESPONSE_CACHE_MB"),
        ({"RESPONSE_CACHE_MB": "lots"}, "RESPONSE_CACHE_MB"),
    ],
)
def test_bad_cache_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        config.load({"DATABASE_URL": "postgresql://u@h/d", **env})


def test_cache_settings_default_on_and_can_be_turned_off():
    assert config.load({"DATABASE_URL": "postgresql://u@h/d"}).response_cache_bytes == 4 * 2**20
    off = config.load({"DATABASE_URL": "postgresql://u@h/d", "RESPONSE_CACHE": "off"})
    assert off.response_cache_bytes == 0


def test_the_links_host_is_part_of_the_key_and_the_etag(admin, make_app):
    seed.seed_users(admin, 30, progress=False)
    client = make_app().test_client()
    a = [client.get("/?limit=10", headers={"Host": "a.example"}) for _ in range(2)]
    b = client.get("/?limit=10", headers={"Host": "b.example"})
    assert cache_of(a[1]) == "hit" and cache_of(b) == "miss"
    assert a[1].get_json()["next"].startswith("http://a.example/")
    assert b.get_json()["next"].startswith("http://b.example/")
    assert b.headers["ETag"] != a[1].headers["ETag"]
    stale = client.get(
        "/?limit=10", headers={"Host": "b.example", "If-None-Match": a[1].headers["ETag"]}
    )
    assert stale.status_code == 200
