"""RESPONSE_MAX_BYTES: the full listing ends as valid JSON under the limit, with `next`
set, and following `next` yields every id exactly once."""

from __future__ import annotations

import gzip
import json

import pytest

from devtools import seed
from lib import config
from lib.listing import pages as listing

USERS = 300
LIMIT = 10_000  # bytes: about 90 users of the seed


@pytest.fixture
def client(admin, make_app, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 20)  # ~2 KB pages
    seed.seed_users(admin, USERS, progress=False)
    return make_app(RESPONSE_MAX_BYTES=str(LIMIT)).test_client()


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_the_listing_ends_under_the_limit_and_next_finds_the_rest(client, encoding):
    response = client.get("/", headers={"Accept-Encoding": encoding})
    assert response.status_code == 200 and response.is_streamed
    data = response.get_data()
    text = gzip.decompress(data) if encoding == "gzip" else data
    assert LIMIT - 2500 < len(text) <= LIMIT  # stopped before the page that would cross it
    body = json.loads(text)
    ids = [user["id"] for user in body["users"]]
    link = body["next"]
    assert link.startswith("http://localhost/?limit=")
    while link:
        page = client.get(link).get_json()
        ids += [user["id"] for user in page["users"]]
        link = page["next"]
    assert ids == list(range(1, USERS + 1))


def test_no_next_when_the_listing_fits(admin, make_app):
    seed.seed_users(admin, 5, progress=False)
    body = make_app(RESPONSE_MAX_BYTES=str(LIMIT)).test_client().get("/").get_json()
    assert list(body) == ["users"] and len(body["users"]) == 5


def test_the_default_is_the_platforms_limit_on_cloud_run_only(postgres):
    url = {"DATABASE_URL": postgres.admin_url}
    assert config.load(url).max_response_bytes is None
    on_cloud_run = config.load({**url, "K_SERVICE": "users"})
    assert on_cloud_run.max_response_bytes == config.CLOUD_RUN_MAX_BYTES == 10_000_000
    assert (
        config.load({**url, "K_SERVICE": "users", "RESPONSE_MAX_BYTES": "0"}).max_response_bytes
        is None
    )
