"""The listing behind the exact-validator cache: a probe first, a render only on a change.

For each request the server's identity and validator token are read first, by a probe
of one round trip (lib/listing/validator.py). A matching If-None-Match then gets 304, and a
stored response rendered at the same token on the same server is sent as it was kept;
anything else renders, reading its token in the page's own statement, and is kept for the
next request. While probes keep missing (writes elsewhere in the cluster), requests render
at once and the probe resumes once renders show that it would hit again (lib/listing/cache.py).

The cache turns itself off, saying why in one log line, when the role may not execute the
functions the validator reads; it never guesses.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import flask
from sqlalchemy.pool import PoolProxiedConnection

from lib.config import Settings
from lib.http import compression, links
from lib.http import render as responses
from lib.http.telemetry import Stats, current
from lib.listing import validator
from lib.listing.cache import Entry, ResponseCache
from lib.listing.pages import on_own_connection, open_listing
from lib.listing.paging import BadRequest, PageRequest
from lib.listing.validator import Identity
from lib.postgres.database import Database
from lib.postgres.watch import Watch
from lib.resource import Resource

log = logging.getLogger(__name__)

# Part of every ETag: a change to what the function writes for the same rows changes it.
BODY_FORMAT = "1"


class CachedListings:
    """This process's response cache and the validator it trusts (found on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = ResponseCache(settings.response_cache_bytes)
        self.off: str | None = None if settings.response_cache_bytes else "RESPONSE_CACHE=off"
        # Per (resource, schema): the token SQL found on first use (lib/listing/validator.py).
        self._found: dict[tuple[Resource, str | None], str] = {}
        self._lock = threading.Lock()

    def respond(
        self,
        request: flask.Request,
        db: Database,
        resource: Resource,
        schema: str | None,
        page: PageRequest,
        watch: Watch,
    ) -> flask.Response:
        """The listing `page` of `resource`: from the cache when the validator says so.
        `watch` cancels a statement whose client left or whose deadline passed."""
        stats, max_bytes = current(), self.settings.max_response_bytes
        token_sql = self._validator(db, resource, schema)
        if token_sql is None:
            stats.cache = "off"
            listing = open_listing(db, resource, schema, page, watch)
            return responses.listing_json(request, listing, page, max_bytes)
        shape = shape_of(request, resource, schema, page, max_bytes)
        if not self.cache.holds(shape) and not request.if_none_match:
            stats.cache = "miss"  # nothing a probe could find: render at once
        elif self.cache.should_probe():
            identity, token = self._probe(db, token_sql, stats, watch)
            if token is not None:
                key, etag = (identity, shape), make_etag(identity, token, shape)
                entry = self.cache.get(key, token)
                if entry is not None:
                    self.cache.count(hit=True)
                    stats.cache = "hit"
                    return self._send(request, key, entry, etag)
                if responses.matches(request, etag):  # another instance rendered it
                    self.cache.count(hit=True)
                    stats.cache = "hit"
                    return responses.not_modified(request, etag, may_stream=page.limit is None)
            self.cache.count(hit=False)
            stats.cache = "miss"
        else:
            stats.cache = "skip"
        listing = open_listing(db, resource, schema, page, watch, token_sql)
        first = listing.first
        if first.token is None or first.identity is None:
            return responses.listing_json(request, listing, page, max_bytes)
        key, etag = (first.identity, shape), make_etag(first.identity, first.token, shape)
        built = responses.whole_body(request, listing, page)
        if built is None:
            return responses.listing_json(request, listing, page, max_bytes, "W/" + etag)
        body, headers = built
        entry = Entry(first.token, body, headers=headers)
        self.cache.rendered(key, entry)
        return self._send(request, key, entry, etag)

    def health(self) -> dict[str, Any]:
        validators = {
            resource.table: "snapshot" if sql == validator.SNAPSHOT else "trigger"
            for (resource, _), sql in self._found.items()
        }
        state = {"enabled": self.off is None, "validators": {} if self.off else validators}
        return {**state, **({"off": self.off} if self.off else {}), **self.cache.health()}

    def _send(
        self, request: flask.Request, key: Hashable, entry: Entry, etag: str
    ) -> flask.Response:
        def gzip(raw: bytes) -> bytes:
            return self.cache.add_gzip(key, entry, compression.compress)

        return responses.whole(request, entry.raw, entry.headers, etag, gzip)

    def _probe(
        self, db: Database, token_sql: str, stats: Stats, watch: Watch
    ) -> tuple[Identity, str | None]:
        """(server, token) now, on a connection of its own, as a page is read."""

        def probe(conn: PoolProxiedConnection) -> tuple[Identity, str | None]:
            with watch.statement(conn):
                identity, token, _ = validator.read(
                    db, conn, lambda with_id: validator.probe_sql(token_sql, with_id)
                )
            return identity, token

        return on_own_connection(db, stats, probe)

    def _validator(self, db: Database, resource: Resource, schema: str | None) -> str | None:
        """The token SQL to read for this table, found once per process: the opt-in
        trigger's if installed, else the snapshot; None (and one log line) when off. While
        one request finds it, the others at that moment are served uncached, not held."""
        if self.off:
            return None
        found = self._found.get((resource, schema))
        if found is None:
            if not self._lock.acquire(blocking=False):
                return None
            try:
                found = self._found.get((resource, schema)) or self._find(db, resource, schema)
                self._found[(resource, schema)] = found
            finally:
                self._lock.release()
        return found if self.off is None else None

    def _find(self, db: Database, resource: Resource, schema: str | None) -> str:
        conn = db.checkout()
        try:
            [(allowed, trigger)] = db.fetch(conn, validator.find_sql(resource, schema))
        finally:
            db.release(conn)
        if not allowed:
            self.off = (
                "the role may not execute pg_control_system(), pg_current_snapshot() "
                "or pg_postmaster_start_time(): GRANT EXECUTE on them, or set "
                "RESPONSE_CACHE=off"
            )
            log.warning("response cache off: %s", self.off)
            return ""
        if trigger:
            table = validator.version_table(resource, schema)
            log.info("response cache: validated by the version row of %s", table)
            return validator.trigger_token_sql(resource, schema)
        return validator.SNAPSHOT


@dataclass(frozen=True)
class Shape:
    """What the bytes depend on besides the rows: the table and its columns, the page, the
    client's encoding preference (gzip when streamed, gzip by the body's size), the links'
    base and the streamed listing's byte limit."""

    resource: Resource
    schema: str | None
    after: int
    limit: int | None
    encoding: tuple[bool, bool]
    origin: str | None  # the links' scheme and host (lib/http/links.py)
    max_bytes: int | None  # where a streamed listing ends with `next` (MAX_RESPONSE_BYTES)


def shape_of(
    request: flask.Request,
    resource: Resource,
    schema: str | None,
    page: PageRequest,
    max_bytes: int | None,
) -> Shape:
    accept = request.headers.get("Accept-Encoding")
    encoding = (compression.use_gzip(accept, None), compression.use_gzip(accept, 0))
    return Shape(resource, schema, page.after, page.limit, encoding, origin(request), max_bytes)


def origin(request: flask.Request) -> str | None:
    """The links' base, or None when the Host cannot make one (then no page is answered
    with a link: the paging path refuses that Host itself)."""
    try:
        return links.origin(request)
    except BadRequest:
        return None


def make_etag(identity: Identity, token: str, shape: Shape) -> str:
    """An ETag from what decides the bytes: server, token, request shape, format. Hashed:
    it reveals nothing of the server, and it is the same on every instance. A streamed
    listing sends it weak: its later pages are later statements (a write during the
    transfer shows in them, and moves the token on for the next request)."""
    text = repr((BODY_FORMAT, identity.system_id, identity.started, token, shape))
    return '"' + hashlib.blake2b(text.encode(), digest_size=16).hexdigest() + '"'
