"""A listing: the rows one request gets, its first page fetched before the response starts.

`open_listing` is the I/O: the handler calls it to check out a connection and fetch the first
page; the statements come from lib/statements.py. Nothing here connects in a constructor.
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
from lib.errors import ConfigError, ConnectionLost, ServerError
from lib.paging import PageRequest
from lib.resource import Resource

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
    db: Database, resource: Resource, schema: str | None, request: PageRequest
) -> Listing:
    """Check out a connection and fetch the first page; the rest is `Listing.rest()`.

    Holding the first page before the response starts means any database error on it
    still becomes a proper status code. A listing that needs no more pages has already
    given its connection back.
    """
    listing = Listing(db, resource, schema)
    limit = request.limit or PAGE_ROWS
    try:
        try:
            listing.first = listing.fetch_first(request.after, limit)
        except ConnectionLost:
            # The pooled connection was dead (server restart, failover, idle cut) and
            # nothing has been sent yet: one retry on a fresh connection hides it.
            listing.stats.retried = True
            listing.first = listing.fetch_first(request.after, limit)
    except BaseException:
        listing.close()
        raise
    if request.limit is not None or not listing.first.more:
        listing.close()
    else:
        listing.prefetch(listing.first)
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

    Later pages stream on the first page's connection. While one page goes out to the
    client, a helper thread already has PostgreSQL render the next one (one page ahead at
    most, each page its own autocommit statement: no snapshot held for the whole transfer,
    memory bounded by two pages).
    """

    first: Page  # set by open_listing

    def __init__(self, db: Database, resource: Resource, schema: str | None) -> None:
        self.resource = resource
        self._db = db
        self._schema = schema
        self._conn: PoolProxiedConnection | None = None
        self._helper: futures.ThreadPoolExecutor | None = None
        self._ahead: futures.Future[Page] | None = None  # the next page, being fetched
        self.stats = telemetry.current()  # kept: later pages stream after the handler returns

    def fetch_first(self, after: int, limit: int) -> Page:
        """On a newly checked-out connection (any held one given back first): the columns
        checked if this database has not yet found them, then one page."""
        self.close()
        started = time.perf_counter()
        self._conn = self._db.checkout()
        self.stats.pool_wait_ms += (time.perf_counter() - started) * 1000
        checked = _checked.setdefault(self._db, set())
        if (self.resource, self._schema) not in checked:
            check_columns(self._db, self._conn, self.resource, self._schema)
            checked.add((self.resource, self._schema))
        return self._fetch(self._conn, after, limit)

    def _fetch(self, conn: PoolProxiedConnection, after: int, limit: int) -> Page:
        started = time.perf_counter()
        page = fetch_page(self._db, conn, self.resource, self._schema, after, limit)
        self.stats.query_ms += (time.perf_counter() - started) * 1000
        self.stats.queries += 1
        self.stats.rows += page.rows
        return page

    def prefetch(self, page: Page) -> None:
        """Start fetching the page after `page` on the helper thread, if more rows follow."""
        self._ahead = None
        if page.more and self._conn is not None:
            if self._helper is None:
                self._helper = futures.ThreadPoolExecutor(
                    1, thread_name_prefix=self.resource.prefetch_thread
                )
            self._ahead = self._helper.submit(self._fetch, self._conn, page.last_id or 0, PAGE_ROWS)

    def rest(self) -> Iterator[str]:
        """JSON text of the pages after the first, each starting with a comma."""
        try:
            while self._ahead is not None:
                page = self._ahead.result()
                self.prefetch(page)
                if page.rows:
                    yield "," + page.json
        finally:
            self.close()

    def close(self) -> None:
        """Return the connection to the pool (idempotent; also called when the client leaves).

        A page still being fetched finishes first (within statement_timeout): a connection
        must not go back to the pool in the middle of a statement.
        """
        self._ahead = None
        if self._helper is not None:
            helper, self._helper = self._helper, None
            helper.shutdown(wait=True)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._db.release(conn)
