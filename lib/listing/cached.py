"""The listing behind the exact-validator cache: a probe first, a render only on a change.

For each request the server's identity and validator token are read first, by a probe
of one round trip (lib/listing/validator.py). A matching If-None-Match then gets 304, and a
stored response rendered at the same token on the same server is sent as it was kept;
anything else renders, reading its token in the page's own statement, and is kept for the
next request. While probes keep missing (writes elsewhere in the cluster), requests render
at once and the probe resumes once renders show that it would hit again (lib/listing/cache.py).

The cache turns itself off, saying why in one log line, when the role may not execute the
functions the validator reads; it never guesses. Values in, an outcome out: nothing here
knows HTTP.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

from lib import stats as request_stats
from lib.config import Settings
from lib.listing import etags, pages, validator
from lib.listing.cache import Entry, ResponseCache
from lib.listing.outcome import Listed, NotModified, Outcome
from lib.listing.pages import Rendered
from lib.listing.query import Query, Shape
from lib.listing.spool import Spool
from lib.listing.validator import Identity
from lib.postgres.database import Database
from lib.postgres.watch import Watch
from lib.resource import Resource

log = logging.getLogger(__name__)


class CachedListings:
    """This process's response cache and the validator it trusts (found on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.cache = ResponseCache(settings.response_cache_bytes)
        self.off: str | None = None if settings.response_cache_bytes else "RESPONSE_CACHE=off"
        self._found: dict[Resource, str] = {}  # the token SQL found on first use
        self._lock = threading.Lock()

    def respond(self, db: Database, query: Query, watch: Watch) -> Outcome:
        """The listing `query` asks for: from the cache when the validator says so.
        `watch` cancels a statement whose client left or whose deadline passed."""
        stats, shape, held = request_stats.current(), query.shape, query.if_none_match
        token_sql = self._validator(db, shape.resource)
        if token_sql is None:
            stats.cache = "off"
            return _answer(pages.read(db, shape, watch), shape, held)
        if not self.cache.holds(shape) and not held:
            stats.cache = "miss"  # nothing a probe could find: render at once
        elif self.cache.should_probe():
            identity, token = self._probe(db, token_sql, watch)
            if token is not None:
                key, etag = (identity, shape), etags.of_state(identity, token, shape)
                entry = self.cache.get(key, token)
                if entry is not None or etags.matches(held, etag):
                    self.cache.count(hit=True)
                    stats.cache = "hit"
                    if etags.matches(held, etag):  # perhaps another instance rendered it
                        return NotModified(etag)
                    return Listed(Spool.of(entry.body), entry.gzip, etag, entry.next)
            self.cache.count(hit=False)
            stats.cache = "miss"
        else:
            stats.cache = "skip"
        rendered = pages.read(db, shape, watch, token_sql)
        if rendered.token is None or rendered.identity is None:
            return _answer(rendered, shape, held)
        key = (rendered.identity, shape)
        outcome = _answer(
            rendered, shape, held, etags.of_state(rendered.identity, rendered.token, shape)
        )
        if isinstance(outcome, Listed) and outcome.body.size <= self.cache.max_bytes:
            body = outcome.body.read()
            self.cache.rendered(key, Entry(rendered.token, body, outcome.gzip, outcome.next))
        return outcome

    def health(self) -> dict[str, Any]:
        validators = {
            resource.table: "snapshot" if sql == validator.SNAPSHOT else "trigger"
            for resource, sql in self._found.items()
        }
        state = {"enabled": self.off is None, "validators": {} if self.off else validators}
        return {**state, **({"off": self.off} if self.off else {}), **self.cache.health()}

    def _probe(self, db: Database, token_sql: str, watch: Watch) -> tuple[Identity, str | None]:
        """(server, token) now, on a connection of its own, as a page is read."""

        def probe(conn: PoolProxiedConnection) -> tuple[Identity, str | None]:
            request_stats.current().queries += 1
            with watch.statement(conn):
                identity, token, _ = validator.read(
                    db, conn, lambda with_id: validator.probe_sql(token_sql, with_id)
                )
            return identity, token

        return pages.on_own_connection(db, request_stats.current(), probe)

    def _validator(self, db: Database, resource: Resource) -> str | None:
        """The token SQL to read for this table, found once per process: the opt-in
        trigger's if installed, else the snapshot; None (and one log line) when off. While
        one request finds it, the others at that moment are served uncached, not held."""
        if self.off:
            return None
        found = self._found.get(resource)
        if found is None:
            if not self._lock.acquire(blocking=False):
                return None
            try:
                found = self._found.get(resource) or self._find(db, resource)
                self._found[resource] = found
            finally:
                self._lock.release()
        return found if self.off is None else None

    def _find(self, db: Database, resource: Resource) -> str:
        conn = db.checkout()
        try:
            [(allowed, trigger)] = db.fetch(conn, validator.find_sql(resource))
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
            table = validator.version_table(resource)
            log.info("response cache: validated by the version row of %s", table)
            return validator.trigger_token_sql(resource)
        return validator.SNAPSHOT


def _answer(
    rendered: Rendered, shape: Shape, held: frozenset[str], etag: str | None = None
) -> Outcome:
    """The rendered body in the representation the client takes, with its ETag (`etag`, or
    the hash of the bytes sent), or a 304 when the client holds it."""
    body, gzip = rendered.body, shape.gzip.applies(rendered.body.size)
    if gzip:
        raw, body = body, body.gzipped()
        raw.close()
    etag = etag or etags.of_bytes(body.digest())
    if etags.matches(held, etag):
        body.close()
        return NotModified(etag)
    return Listed(body, gzip, etag, rendered.next)
