"""A listing: the rows one request gets, page by page, each page on a connection checked out
for it alone.

`open_listing` is the I/O: the handler calls it to fetch the first page before the response
starts. Every page, the first and the streamed ones, goes through `Listing.page`: check a
connection out, have PostgreSQL render the page, give the connection back, and only then
hand the page on to be written to the client. A slow or stalled client therefore holds a
worker thread and at most two pages of memory, never a database connection. The statements
come from lib/statements.py. Nothing here connects in a constructor.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from concurrent import futures  # its thread module loads on the first streamed listing
from dataclasses import dataclass

from sqlalchemy.pool import PoolProxiedConnection

from lib import statements, telemetry
from lib.engine import Database
from lib.errors import Cancelled, ConfigError, ConnectionLost, ServerError
from lib.paging import PageRequest
from lib.resource import Resource
from lib.watch import CLIENT_LEFT, Watch

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


def open_listing(
    db: Database,
    resource: Resource,
    schema: str | None,
    request: PageRequest,
    watch: Watch | None = None,
) -> Listing:
    """Fetch the first page; the rest is `Listing.rest()`. `watch` cancels a statement
    whose client has left or whose deadline has passed (lib/watch.py).

    Holding the first page before the response starts means any database error on it
    still becomes a proper status code.
    """
    listing = Listing(db, resource, schema, watch or Watch())
    listing.first = listing.page(request.after, request.limit or PAGE_ROWS)
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
) -> Page:
    """One page in one round trip (no bind parameters: pg8000 then uses simple query)."""
    sql = statements.page_sql(resource, schema, after, limit)
    try:
        [(rows, last_id, text, more)] = db.fetch(conn, sql)
    except ServerError as exc:
        if exc.sqlstate == UNDEFINED_COLUMN:  # dropped since the columns were checked
            raise ConfigError(
                resource.columns_setting, f"{exc.message}: the table no longer has it"
            ) from exc
        raise
    return Page(rows=rows, last_id=last_id, json=text, more=more)


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

    def page(self, after: int, limit: int) -> Page:
        """The `limit` rows after key `after`, on a connection checked out for this page
        and given back before the page is returned. A pooled connection found dead
        (server restart, failover, idle cut) is retried once on a fresh one: a page is
        one read, so the retry means the same."""
        try:
            try:
                return self._page_on_one_connection(after, limit)
            except ConnectionLost:
                self.stats.retried = True
                return self._page_on_one_connection(after, limit)
        except Cancelled as exc:
            self.stats.cancelled = exc.reason
            raise

    def _page_on_one_connection(self, after: int, limit: int) -> Page:
        started = time.perf_counter()
        conn = self._db.checkout()
        self.stats.pool_wait_ms += (time.perf_counter() - started) * 1000
        try:
            checked = _checked.setdefault(self._db, set())
            if (self.resource, self._schema) not in checked:
                with self.watch.statement(conn):
                    check_columns(self._db, conn, self.resource, self._schema)
                checked.add((self.resource, self._schema))
            started = time.perf_counter()
            with self.watch.statement(conn):  # each statement: a cancel must not outlive it
                page = fetch_page(self._db, conn, self.resource, self._schema, after, limit)
        finally:
            self._db.release(conn)
        self.stats.query_ms += (time.perf_counter() - started) * 1000
        self.stats.queries += 1
        self.stats.rows += page.rows
        return page

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
