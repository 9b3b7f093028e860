"""A listing: the rows one request gets, page by page, each page on a connection checked out
for it alone.

`open_listing` is the I/O: the handler calls it to fetch the first page before the response
starts. Every page, the first and the streamed ones, goes through `Listing.page`: check a
connection out, have PostgreSQL render the page, give the connection back, and only then
hand the page on to be written to the client. A slow or stalled client therefore holds a
worker thread and at most two pages of memory, never a database connection. The statements
come from lib/listing/statements.py. Nothing here connects in a constructor.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from concurrent import futures  # its thread module loads on the first streamed listing
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.pool import PoolProxiedConnection

from lib.errors import Cancelled, ConfigError, ConnectionLost, ServerError
from lib.http import telemetry
from lib.listing import statements, validator
from lib.listing.paging import PageRequest
from lib.listing.validator import Identity
from lib.postgres.database import Database
from lib.postgres.watch import CLIENT_LEFT, Watch
from lib.resource import Resource

T = TypeVar("T")

UNDEFINED_COLUMN = "42703"
PAGE_ROWS = 5000  # rows per round trip when streaming every row (~0.5 MB of users' JSON)

# The (resource, schema) pairs whose columns each Database has found: checked on first use,
# once per process. Two first requests at once may both check, harmlessly.
_checked: weakref.WeakKeyDictionary[Database, set[tuple[Resource, str | None]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class Page:
    rows: int
    last_id: int | None  # the page's last key
    json: str  # the page's objects, comma-separated, without brackets
    more: bool  # rows with a larger key exist
    # With a validator (`token_sql`): the server and the token the page was read at.
    identity: Identity | None = None
    token: str | None = None


def open_listing(
    db: Database,
    resource: Resource,
    schema: str | None,
    request: PageRequest,
    watch: Watch | None = None,
    token_sql: str | None = None,
) -> Listing:
    """Fetch the first page (read with the validator `token_sql`, if given:
    lib/listing/validator.py); the rest is `Listing.rest()`. `watch` cancels a statement whose
    client has left or whose deadline has passed (lib/postgres/watch.py).

    Holding the first page before the response starts means any database error on it
    still becomes a proper status code.
    """
    listing = Listing(db, resource, schema, watch or Watch())
    listing.first = listing.page(request.after, request.limit or PAGE_ROWS, token_sql)
    return listing


def check_columns(
    db: Database, conn: PoolProxiedConnection, resource: Resource, schema: str | None
) -> None:
    """Fail with a configuration error naming any configured column the table lacks."""
    rows = db.fetch(conn, statements.columns_sql(resource, schema))
    statements.check_columns(resource, schema, {row[0] for row in rows})


def fetch_page(
    db: Database,
    conn: PoolProxiedConnection,
    resource: Resource,
    schema: str | None,
    after: int,
    limit: int,
    token_sql: str | None = None,
) -> Page:
    """One page in one round trip (no bind parameters: pg8000 then uses simple query), with
    the validator's token read in the same statement when `token_sql` is given."""
    sql = statements.page_sql(resource, schema, after, limit)
    try:
        if token_sql is None:
            [(rows, last_id, text, more)] = db.fetch(conn, sql)
            return Page(rows=rows, last_id=last_id, json=text, more=more)
        identity, token, (rows, last_id, text, more) = validator.read(
            db, conn, lambda with_id: validator.render_sql(sql, token_sql, with_id)
        )
    except ServerError as exc:
        if exc.sqlstate == UNDEFINED_COLUMN:  # dropped since the columns were checked
            raise ConfigError(
                resource.columns_setting, f"{exc.message}: the table no longer has it"
            ) from exc
        raise
    return Page(rows, last_id, text, more, identity, token)


def on_own_connection(
    db: Database, stats: telemetry.Stats, work: Callable[[PoolProxiedConnection], T]
) -> T:
    """`work(conn)` on a connection checked out for it alone and given back before this
    returns, so that nothing holds a connection while a client reads. A pooled connection
    found dead (server restart, failover, idle cut) is retried once on a fresh one: `work` is
    one read, so the retry means the same. A cancel (lib/postgres/watch.py) is noted in `stats`."""
    try:
        try:
            return _once(db, stats, work)
        except ConnectionLost:
            stats.retried = True
            return _once(db, stats, work)
    except Cancelled as exc:
        stats.cancelled = exc.reason
        raise


def _once(db: Database, stats: telemetry.Stats, work: Callable[[PoolProxiedConnection], T]) -> T:
    started = time.perf_counter()
    conn = db.checkout()
    stats.pool_wait_ms += (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    try:
        result = work(conn)
    finally:
        db.release(conn)
    stats.query_ms += (time.perf_counter() - started) * 1000
    stats.queries += 1
    return result


class Listing:
    """The rows for one request, made by `open_listing`: `first`, then the rest as the
    client reads.

    While one page goes out to the client, a helper thread already has PostgreSQL render
    the next one on a connection of its own checkout (one page ahead at most, each page
    its own autocommit statement: no snapshot held for the whole transfer, memory bounded
    by two pages, no connection held while the client reads).
    """

    first: Page  # set by open_listing

    def __init__(
        self, db: Database, resource: Resource, schema: str | None, watch: Watch | None = None
    ) -> None:
        self.resource = resource
        self.watch = watch or Watch()
        self._db = db
        self._schema = schema
        self._helper: futures.ThreadPoolExecutor | None = None
        self._ahead: futures.Future[Page] | None = None  # the next page, being fetched
        self.stats = telemetry.current()  # kept: later pages stream after the handler returns

    def page(self, after: int, limit: int, token_sql: str | None = None) -> Page:
        """The `limit` rows after key `after`, on a connection of its own
        (`on_own_connection`); the columns checked first if this database has not yet
        found them."""
        page = on_own_connection(
            self._db, self.stats, lambda conn: self._fetch(conn, after, limit, token_sql)
        )
        self.stats.rows += page.rows
        return page

    def _fetch(
        self, conn: PoolProxiedConnection, after: int, limit: int, token_sql: str | None
    ) -> Page:
        checked = _checked.setdefault(self._db, set())
        if (self.resource, self._schema) not in checked:
            with self.watch.statement(conn):
                check_columns(self._db, conn, self.resource, self._schema)
            checked.add((self.resource, self._schema))
        with self.watch.statement(conn):  # each statement: a cancel must not outlive it
            return fetch_page(self._db, conn, self.resource, self._schema, after, limit, token_sql)

    def prefetch(self, page: Page) -> None:
        """Start fetching the page after `page` on the helper thread, if more rows follow."""
        self._ahead = None
        if page.more:
            if self._helper is None:
                self._helper = futures.ThreadPoolExecutor(
                    1, thread_name_prefix=self.resource.prefetch_thread
                )
            self._ahead = self._helper.submit(self.page, page.last_id or 0, PAGE_ROWS)

    def rest(self) -> Iterator[Page]:
        """The pages after the first that hold rows (the fetch ahead starts with `prefetch`
        as the first page goes out; a HEAD, which sends no body, never fetches more)."""
        try:
            while self._ahead is not None:
                page = self._ahead.result()
                self.prefetch(page)
                if page.rows:
                    yield page
        finally:
            self.close()

    def close(self) -> None:
        """Stop fetching ahead (idempotent; also called when the client leaves).

        A page still being fetched is cancelled on the server, and gives its connection
        back itself once its statement has ended.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not ahead.done():
            self.watch.cancel(CLIENT_LEFT)
        if self._helper is not None:
            helper, self._helper = self._helper, None
            helper.shutdown(wait=True)
