"""A request, parsed once into frozen values before any I/O; a bad one is refused here.

What the core needs (lib/listing/query.py) is read from the flask request exactly once:
the route, the page, the links' origin (its Host checked), the encodings the client takes,
the tags it holds, and the cancel scope (deadline and client socket). A 404, a 405, or a 400
for a bad Host, limit or cursor is answered before the database is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import flask
from werkzeug.datastructures import MultiDict
from werkzeug.http import parse_etags

from lib.config import Settings
from lib.errors import BadRequest, bounded, excerpt
from lib.http import links
from lib.listing import compression, etags
from lib.listing.paging import DEFAULT_LIMIT, MAX_LIMIT, PageRequest, decode_cursor
from lib.listing.query import Query, Shape
from lib.postgres.watch import Watch

LISTING, HEALTH = "/", "/healthz"  # exact: "/healthz/" is another path, and a 404
ALLOWED_METHODS = ("GET", "HEAD")
PARAMETERS = ("limit", "cursor")
_DIGITS = frozenset("0123456789")  # not str.isdigit(): it is true for superscripts too


class HttpError(Exception):
    """A request refused before any work: its status, code, message and headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass(frozen=True)
class Health:
    """GET /healthz: answered from what the process knows, never from the database."""


@dataclass(frozen=True)
class Listing:
    query: Query
    watch: Watch  # cancels a statement whose client left or whose deadline passed


def parse(request: flask.Request, settings: Settings) -> Health | Listing:
    """The request as values, or HttpError/BadRequest."""
    if request.path not in (LISTING, HEALTH):
        raise HttpError(404, "not_found", "no such path; the paths are / and /healthz")
    if request.method not in ALLOWED_METHODS:
        raise HttpError(
            405,
            "method_not_allowed",
            f"{excerpt(request.method)} is not allowed; use GET or HEAD",
            {"Allow": ", ".join(ALLOWED_METHODS)},
        )
    if request.path == HEALTH:
        return Health()
    headers = request.headers
    shape = Shape(
        resource=settings.resource,
        page=page_request(request.args),
        gzip=compression.negotiate(headers.get("Accept-Encoding")),
        origin=links.origin(
            headers.get("Host", ""), headers.get("X-Forwarded-Proto", ""), request.scheme
        ),
        path=request.path,
        max_bytes=settings.max_response_bytes,
    )
    watch = Watch.of(request.environ, settings.request_timeout, settings.client_idle_timeout)
    return Listing(Query(shape, held_tags(headers.get("If-None-Match"))), watch)


def page_request(args: MultiDict[str, str]) -> PageRequest:
    """`?limit=` and `?cursor=`: every row, or one page after a cursor."""
    unknown = sorted(set(args) - set(PARAMETERS))
    if unknown:
        raise BadRequest(
            f"unknown query parameter {bounded(unknown[0])}; allowed: limit, cursor "
            "(a misspelt limit must not send every row)"
        )
    for name in PARAMETERS:
        if len(args.getlist(name)) > 1:
            raise BadRequest(f"{name} is given more than once")
    after = decode_cursor(args["cursor"]) if "cursor" in args else 0
    if "limit" not in args:
        return PageRequest(after=after, limit=DEFAULT_LIMIT if "cursor" in args else None)
    raw = args["limit"]
    # ASCII digits, at most 4: int() reads other scripts' digits, and any length.
    if not 0 < len(raw) <= 4 or not set(raw) <= _DIGITS or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return PageRequest(after=after, limit=int(raw))


def held_tags(if_none_match: str | None) -> frozenset[str]:
    """If-None-Match as the opaque tags the client holds, weak or strong alike (the weak
    comparison applies), with "*" for any."""
    if not if_none_match:
        return frozenset()
    parsed = parse_etags(if_none_match)
    tags = frozenset(parsed.as_set(include_weak=True))
    return tags | {etags.ANY} if parsed.star_tag else tags
