"""CORS through the real app: off by default; for an allowed origin, preflights and every
answer (errors included) carry what a browser needs; another origin gets nothing."""

from __future__ import annotations

import sys

import pytest

from lib import config
from lib.errors import ConfigError
from tests.conftest import insert_users

PAGE = "https://app.example"
PREFLIGHT = {
    "Origin": PAGE,
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "if-none-match, authorization",
}
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers")


@pytest.fixture
def users(admin):
    insert_users(admin, [(f"u{i}@example.com", "U", "2024-01-01T00:00:00Z") for i in range(3)])


def test_no_cors_headers_when_unset(users, make_app):
    client = make_app().test_client()
    response = client.get("/?limit=1", headers={"Origin": PAGE})
    assert response.status_code == 200
    assert not any(name in response.headers for name in CORS_HEADERS)
    assert "Origin" not in response.headers.get("Vary", "")
    assert client.options("/", headers=PREFLIGHT).status_code == 405


def test_an_allowed_origin_gets_preflight_and_headers_on_every_answer(users, make_app):
    client = make_app(CORS_ALLOWED_ORIGINS=f"{PAGE}, http://localhost:3000").test_client()
    main = sys.modules["main"]
    preflight = client.options("/", headers=PREFLIGHT)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == PAGE
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert {"if-none-match", "authorization", "content-type"} <= set(allowed.split(", "))
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    assert main.DB.pool_state()["started"] is False  # a preflight needs no database
    page = client.get("/?limit=1", headers={"Origin": PAGE})
    bad = client.get("/?limit=0", headers={"Origin": PAGE})
    for response, status in ((page, 200), (bad, 400)):
        assert response.status_code == status
        assert response.headers["Access-Control-Allow-Origin"] == PAGE
        exposed = response.headers["Access-Control-Expose-Headers"]
        assert {"Link", "ETag", "Retry-After", "Server-Timing"} <= set(exposed.split(", "))
        assert "Origin" in response.headers["Vary"]
    assert "Accept-Encoding" in page.headers["Vary"]


def test_another_origin_gets_no_cors_headers_and_a_refused_preflight(users, make_app):
    client = make_app(CORS_ALLOWED_ORIGINS=PAGE).test_client()
    other = {**PREFLIGHT, "Origin": "https://evil.example"}
    refused = client.options("/", headers=other)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "origin_not_allowed"
    response = client.get("/?limit=1", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert not any(name in response.headers for name in CORS_HEADERS)
    assert "Origin" in response.headers["Vary"]  # a cache must not reuse it for PAGE


def test_any_origin(users, make_app):
    client = make_app(CORS_ALLOWED_ORIGINS="*").test_client()
    response = client.get("/?limit=1", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert client.options("/", headers=PREFLIGHT).status_code == 204


@pytest.mark.parametrize(
    "value",
    [
        "app.example",
        "https://app.example/",
        "https://app.example/path",
        "https://*.example",
        "https://app.example, *",
        "ftp://app.example",
        "https://user@app.example",
    ],
)
def test_an_invalid_origin_is_a_configuration_error(postgres, value):
    with pytest.raises(ConfigError) as raised:
        config.load({"DATABASE_URL": postgres.admin_url, "CORS_ALLOWED_ORIGINS": value})
    assert raised.value.variable == "CORS_ALLOWED_ORIGINS"
