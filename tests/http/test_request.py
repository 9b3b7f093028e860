"""The edge parses a request once, into values, and refuses a bad one before any I/O: table
tests on real werkzeug requests, no server and no database."""

from __future__ import annotations

import flask
import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.test import EnvironBuilder

from lib import config
from lib.errors import BadRequest
from lib.http import links
from lib.http.request import Health, HttpError, Listing, held_tags, page_request, parse
from lib.listing.compression import Gzip
from lib.listing.paging import PageRequest, encode_cursor

SETTINGS = config.load({"DATABASE_URL": "postgresql://u:p@h/db?sslmode=disable"})


def request(path: str = "/", method: str = "GET", **headers: str) -> flask.Request:
    return flask.Request(EnvironBuilder(path=path, method=method, headers=headers).get_environ())


def test_a_listing_request_is_one_frozen_value():
    asked = parse(
        request(
            "/?limit=10&cursor=" + encode_cursor(42),
            Host="api.example:8443",
            **{"X-Forwarded-Proto": "https", "Accept-Encoding": "gzip", "If-None-Match": 'W/"a"'},
        ),
        SETTINGS,
    )
    assert isinstance(asked, Listing)
    shape = asked.query.shape
    assert (shape.page, shape.gzip, shape.origin, shape.path) == (
        PageRequest(after=42, limit=10),
        Gzip.IF_WORTH,
        "https://api.example:8443",
        "/",
    )
    assert asked.query.if_none_match == frozenset({"a"})
    assert hash(asked.query)  # frozen all through: a cache key


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [("/users", "GET", 404), ("/healthz/", "GET", 404), ("/", "POST", 405), ("/", "DELETE", 405)],
)
def test_wrong_paths_and_methods_are_refused(path, method, status):
    with pytest.raises(HttpError) as refused:
        parse(request(path, method), SETTINGS)
    assert refused.value.status == status
    if status == 405:
        assert refused.value.headers == {"Allow": "GET, HEAD"}


def test_healthz_is_its_own_route():
    assert parse(request("/healthz"), SETTINGS) == Health()


@pytest.mark.parametrize(
    "host", ["bad host", "a_b.example", "-a.example", "x" * 300, "[zz]", "a.example:123456"]
)
def test_a_bad_host_is_a_400_for_any_listing(host):
    for path in ("/", "/?limit=5"):
        with pytest.raises(BadRequest, match="Host"):
            parse(request(path, Host=host), SETTINGS)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, PageRequest()),
        ({"limit": "5"}, PageRequest(limit=5)),
        ({"limit": "1000"}, PageRequest(limit=1000)),
        ({"cursor": encode_cursor(7)}, PageRequest(after=7, limit=100)),
        ({"cursor": encode_cursor(7), "limit": "2"}, PageRequest(after=7, limit=2)),
    ],
)
def test_the_page_asked_for(args, expected):
    assert page_request(MultiDict(args)) == expected


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"limit": "0"}, "limit must be"),
        ({"limit": "1001"}, "limit must be"),
        ({"limit": "²"}, "limit must be"),
        ({"limit": "١٢"}, "limit must be"),
        ({"limit": ""}, "limit must be"),
        ({"limit": "00001"}, "limit must be"),
        ({"cursor": "nope"}, "cursor is not one"),
        ({"foo": "bar"}, "misspelt limit must not send every row"),
        ([("limit", "1"), ("limit", "2")], "more than once"),
    ],
)
def test_bad_parameters_are_refused_saying_why(args, fragment):
    with pytest.raises(BadRequest, match=fragment):
        page_request(MultiDict(args))


@pytest.mark.parametrize(
    ("header", "tags"),
    [
        (None, set()),
        ("", set()),
        ('"a"', {"a"}),
        ('W/"a", "b"', {"a", "b"}),
        ("*", {"*"}),
        ('"a", *', {"a", "*"}),
    ],
)
def test_if_none_match_as_the_tags_held(header, tags):
    assert held_tags(header) == frozenset(tags)


@pytest.mark.parametrize(
    ("host", "proto", "scheme", "origin"),
    [
        ("a.example", "", "http", "http://a.example"),
        ("a.example", "https", "http", "https://a.example"),
        ("a.example", "HTTPS, http", "http", "https://a.example"),
        ("a.example", "gopher", "http", "http://a.example"),
        ("127.0.0.1:8080", "", "http", "http://127.0.0.1:8080"),
        ("[::1]:8080", "", "https", "https://[::1]:8080"),
        ("A.Example.", "", "http", "http://A.Example."),
    ],
)
def test_the_links_origin(host, proto, scheme, origin):
    assert links.origin(host, proto, scheme) == origin
