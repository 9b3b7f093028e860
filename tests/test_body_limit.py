"""RESPONSE_MAX_BYTES: a full listing ends as valid JSON under the limit, with `next` in the
body and a Link header, and following either yields every id exactly once. Every page read
is a page sent: the last one is read with a byte budget."""

from __future__ import annotations

import gzip
import json

import pytest

from devtools import seed
from lib import config
from lib.listing import pages as listing
from tests.logs import request_line

USERS = 300
LIMIT = 10_000  # bytes: about 90 users of the seed


@pytest.fixture
def client(admin, make_app, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 20)  # ~2 KB pages
    seed.seed_users(admin, USERS, progress=False)
    return make_app(RESPONSE_MAX_BYTES=str(LIMIT)).test_client()


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_the_listing_ends_under_the_limit_and_next_finds_the_rest(client, encoding, capsys):
    capsys.readouterr()
    response = client.get("/", headers={"Accept-Encoding": encoding})
    assert response.status_code == 200
    data = response.get_data()
    assert int(response.headers["Content-Length"]) == len(data)
    text = gzip.decompress(data) if encoding == "gzip" else data
    assert LIMIT - 200 < len(text) <= LIMIT  # the last page cut at a row, not a page, short
    body = json.loads(text)
    ids = [user["id"] for user in body["users"]]
    link = body["next"]
    assert link.startswith("http://localhost/?limit=")
    assert response.headers["Link"] == f'<{link}>; rel="next"'
    line = request_line(capsys.readouterr().out)
    assert line["ended"] == "limit" and "cancelled" not in line and line["rows"] == len(ids)
    while link:
        page = client.get(link).get_json()
        ids += [user["id"] for user in page["users"]]
        link = page["next"]
    assert ids == list(range(1, USERS + 1))


def test_no_next_when_the_listing_fits(admin, make_app):
    seed.seed_users(admin, 5, progress=False)
    response = make_app(RESPONSE_MAX_BYTES=str(LIMIT)).test_client().get("/")
    assert list(response.get_json()) == ["users"] and len(response.get_json()["users"]) == 5
    assert "Link" not in response.headers


def test_the_default_is_the_platforms_limit_on_cloud_run_only(postgres):
    url = {"DATABASE_URL": postgres.admin_url}
    assert config.load(url).max_response_bytes is None
    on_cloud_run = config.load({**url, "K_SERVICE": "users"})
    assert on_cloud_run.max_response_bytes == config.CLOUD_RUN_MAX_BYTES
    assert 31_000_000 < config.CLOUD_RUN_MAX_BYTES < 32_000_000  # not streamed: 32 MB
    assert (
        config.load({**url, "K_SERVICE": "users", "RESPONSE_MAX_BYTES": "0"}).max_response_bytes
        is None
    )


@pytest.mark.slow
def test_on_cloud_run_300000_users_come_in_whole_responses_under_32_mb(admin, make_app, capsys):
    """K_SERVICE set: each response under the platform's non-streamed limit, with its length
    and a Link; following it, every id once; the log says `limit`, and every page read was
    sent (the statements: the columns' check, page 1, BEGIN, its snapshot, the pages, COMMIT)."""
    seed.seed_users(admin, 300_000, progress=False)
    client = make_app(K_SERVICE="users").test_client()
    capsys.readouterr()
    ids: list[int] = []
    link: str | None = "/"
    responses = 0
    while link and responses < 20:
        response = client.get(link)
        responses += 1
        data = response.get_data()
        response.close()  # what the WSGI server does after the last byte: the log line
        assert response.status_code == 200 and len(data) < 32_000_000
        assert int(response.headers["Content-Length"]) == len(data)
        body = json.loads(data)
        ids += [user["id"] for user in body["users"]]
        link = body.get("next")
        if responses == 1:
            assert link and response.headers["Link"] == f'<{link}>; rel="next"'
            line = request_line(capsys.readouterr().out)
            assert line["ended"] == "limit" and "cancelled" not in line
            assert line["rows"] == len(body["users"]) > 250_000
            pages = -(-line["rows"] // listing.PAGE_ROWS)  # whole pages, the last one cut
            assert line["pages"] == pages and line["queries"] == pages + 4
    assert ids == list(range(1, 300_001))
