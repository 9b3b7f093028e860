"""A second table served through the same code path as `users`, changing only the Resource.

In the tests only: the function serves `users` at `/`. Here the real app (main.py, its
handler, its pool) serves a `teams` table once its Settings hold a `teams` Resource, and
the core the handler calls (CachedListings.respond, values in and an outcome out) serves
both tables from one pool.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import flask
import pytest

from lib import config
from lib.listing import pages as listing
from lib.listing.cached import CachedListings
from lib.listing.compression import Gzip
from lib.listing.outcome import Listed, NotModified
from lib.listing.paging import PageRequest, decode_cursor
from lib.listing.query import Query, Shape
from lib.postgres.database import Database
from lib.postgres.watch import Watch
from lib.resource import Resource
from tests.conftest import function_connections, insert_users

TEAMS = Resource("teams", "teams", ("id", "name"), "id")
IDS = [1, 2, 3, 5, 6, 7, 8, 9]  # 4 deleted: a gap in the keyset


@pytest.fixture
def teams(admin):
    cursor = admin.cursor()
    cursor.execute("DROP TABLE IF EXISTS teams")
    cursor.execute(
        "CREATE TABLE teams (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "name text NOT NULL, budget text DEFAULT 'not served')"
    )
    cursor.execute("INSERT INTO teams (name) SELECT 'team ' || n FROM generate_series(1, 9) n")
    cursor.execute("DELETE FROM teams WHERE id = 4")
    yield admin
    admin.cursor().execute("DROP TABLE IF EXISTS teams")


@pytest.fixture
def serve_teams(make_app, monkeypatch):
    """The real app (main.py) with Settings whose resource is TEAMS: (test client, main)."""

    def build(resource: Resource = TEAMS, **env: str) -> tuple[flask.testing.FlaskClient, object]:
        client = make_app(**env).test_client()
        main = sys.modules["main"]
        monkeypatch.setattr(main, "SETTINGS", dataclasses.replace(main.SETTINGS, resource=resource))
        return client, main

    return build


def test_the_handler_serves_another_table_under_its_own_key(teams, serve_teams):
    client, _ = serve_teams()
    response = client.get("/")
    assert response.status_code == 200
    expected = [{"id": i, "name": f"team {i}"} for i in IDS]  # `budget` is not a served column
    assert response.data == json.dumps({"teams": expected}, separators=(",", ":")).encode()


def test_another_table_pages_with_limit_and_cursor(teams, serve_teams):
    client, _ = serve_teams()
    pages, link = [], "/?limit=3"
    while link is not None:
        response = client.get(link)
        body = response.get_json()
        assert list(body) == ["teams", "next"]
        pages.append([team["id"] for team in body["teams"]])
        link = body["next"]
        if link is not None:
            assert response.headers["Link"] == f'<{link}>; rel="next"'
            assert decode_cursor(link.split("cursor=")[1]) == pages[-1][-1]
    assert pages == [[1, 2, 3], [5, 6, 7], [8, 9]]


def test_another_table_of_several_pages_is_read_on_one_connection(teams, serve_teams, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 2)  # four pages of two
    client, main = serve_teams(DB_POOL_SIZE="1")
    response = client.get("/")
    assert [team["id"] for team in response.get_json()["teams"]] == IDS
    assert main.DB.pool_state()["in_use"] == 0


def test_a_missing_column_names_the_tables_own_setting(teams, serve_teams):
    client, _ = serve_teams(dataclasses.replace(TEAMS, columns=("id", "motto")))
    response = client.get("/")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "configuration_error"
    assert "TEAMS_COLUMNS" in error["message"] and "'motto'" in error["message"]


def test_both_tables_from_one_pool_through_the_core_without_flask(teams, make_app):
    """The core takes values and returns an outcome: no request context, no flask."""
    insert_users(teams, [("ada@example.com", "Ada", "2024-01-01T00:00:00Z")])
    client = make_app(DB_POOL_SIZE="1").test_client()
    main = sys.modules["main"]
    assert client.get("/").get_json()["users"][0]["email"] == "ada@example.com"
    shape = Shape(TEAMS, PageRequest(limit=2), Gzip.NO, "https://api.example", "/teams", None)
    outcome = main.LISTINGS.respond(main.DB, Query(shape), Watch())
    assert isinstance(outcome, Listed) and not outcome.gzip
    body = json.loads(outcome.body.read())
    assert [team["id"] for team in body["teams"]] == [1, 2]
    assert body["next"] == outcome.next == "https://api.example/teams?limit=2&cursor=aWQ6Mg"
    again = main.LISTINGS.respond(main.DB, Query(shape, frozenset({outcome.etag[1:-1]})), Watch())
    assert again == NotModified(outcome.etag)
    assert main.SETTINGS.resource.name == "users"  # the product still serves users
    assert function_connections(teams) == 1  # the one pooled connection, for both tables


def test_making_the_core_does_no_io(postgres):
    settings = config.load({"DATABASE_URL": postgres.admin_url})
    db = Database(settings)
    try:
        CachedListings(settings)
        Query(Shape(TEAMS, PageRequest(), Gzip.IF_WORTH, "http://h", "/", None))
        assert db.pool_state() == {"started": False, "size": 5}  # no engine, no connection
    finally:
        db.close()
