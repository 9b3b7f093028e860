"""Reading a listing: every page of one response in one snapshot, on one connection, into a
spool, before the response starts.

A response shows the table as it was at one moment, as the seed's single SELECT does. A
`?limit=` page, or a full listing of one page, is one statement. A full listing of more
pages reads the rest in one REPEATABLE READ READ ONLY transaction; its first page was read
by the statement before it, and is kept when the transaction's snapshot is that statement's
own (equal `pg_current_snapshot()` text on one server: no transaction has ended between
them), else read again inside it. Behind a transaction pooler both may reach different
servers, so the first page is always read again there.

The connection is held while PostgreSQL renders, never while the client reads: the rows
go to a spool (lib/listing/spool.py) and the connection back to the pool before the first
byte is sent. A listing that would pass its byte limit (RESPONSE_MAX_BYTES on Cloud Run,
else the spool's) ends as valid JSON with `next`; the last page is read with a byte budget
(lib/listing/statements.py), so nothing is rendered that is not sent.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.pool import PoolProxiedConnection

from lib import stats as request_stats
from lib.errors import Cancelled, ConfigError, ConnectionLost, ServerError
from lib.listing import spool, statements, validator
from lib.listing.paging import MAX_ID, MAX_LIMIT, next_url
from lib.listing.query import Shape
from lib.listing.spool import Spool
from lib.listing.validator import Identity
from lib.postgres.database import Database
from lib.postgres.watch import Watch
from lib.resource import Resource
from lib.stats import Stats

T = TypeVar("T")

UNDEFINED_COLUMN = "42703"
PAGE_ROWS = 5000  # rows per statement of a full listing (~0.5 MB of users' JSON)
SLICE = 64 * 1024

# The resources whose columns each Database has found: checked on first use, once per
# process. Two first requests at once may both check, harmlessly.
_checked: weakref.WeakKeyDictionary[Database, set[Resource]] = weakref.WeakKeyDictionary()
# The resources whose last full listing took more than a page: the next one reads its
# first page inside the transaction at once, rather than before it and perhaps again.
_large: weakref.WeakKeyDictionary[Database, set[Resource]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Page:
    rows: int
    last_id: int | None  # the page's last key
    json: str  # the page's objects, comma-separated, without brackets
    more: bool  # rows with a larger key exist
    # With a validator (`token_sql`): the server and the token the page was read at.
    identity: Identity | None = None
    token: str | None = None
    snapshot: str | None = None  # the statement's pg_current_snapshot(), when asked


@dataclass
class Rendered:
    """A listing read whole: its JSON in a spool, and what it was read at."""

    body: Spool
    rows: int
    next: str | None  # the next page's URL: set for a page with more, or a listing at a limit
    identity: Identity | None
    token: str | None
    at_limit: bool = False  # a full listing that ended with `next` at its byte limit


def read(db: Database, shape: Shape, watch: Watch, token_sql: str | None = None) -> Rendered:
    """The listing `shape` asks for, read with the validator `token_sql` (lib/listing/
    validator.py) if given; `watch` cancels a statement whose client has left or whose
    deadline has passed (lib/postgres/watch.py). A connection found dead is retried once
    (`on_own_connection`): the whole read starts again on a fresh one."""
    stats = request_stats.current()
    rendered = on_own_connection(
        db, stats, lambda conn: _Reader(db, conn, shape, watch).read(token_sql)
    )
    stats.rows += rendered.rows
    if rendered.at_limit:
        stats.ended = "limit"
    return rendered


def on_own_connection(db: Database, stats: Stats, work: Callable[[PoolProxiedConnection], T]) -> T:
    """`work(conn)` on a connection checked out for it alone and given back before this
    returns, so that nothing holds a connection while a client reads. A pooled connection
    found dead (server restart, failover, idle cut) is retried once on a fresh one: `work` is
    one read, so the retry means the same. A cancel (lib/postgres/watch.py) is noted in
    `stats`."""
    try:
        try:
            return _once(db, stats, work)
        except ConnectionLost:
            stats.retried = True
            return _once(db, stats, work)
    except Cancelled as exc:
        stats.cancelled = exc.reason
        raise


def _once(db: Database, stats: Stats, work: Callable[[PoolProxiedConnection], T]) -> T:
    started = time.perf_counter()
    conn = db.checkout()
    stats.pool_wait_ms += (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    try:
        return work(conn)
    finally:
        db.release(conn)
        stats.query_ms += (time.perf_counter() - started) * 1000


def _run(db: Database, conn: PoolProxiedConnection, watch: Watch, sql: str) -> list:
    """One statement, watched (a cancel must not outlive it) and counted."""
    request_stats.current().queries += 1
    with watch.statement(conn):
        return db.fetch(conn, sql)


class _Reader:
    """One listing's statements on one checked-out connection."""

    def __init__(self, db: Database, conn: PoolProxiedConnection, shape: Shape, watch: Watch):
        self.db, self.conn, self.shape, self.watch = db, conn, shape, watch
        self.resource = shape.resource
        # Where the body must end, and what its closing `],"next":"..."}` may take.
        self.max_bytes = shape.max_bytes or spool.MAX_BYTES
        self.reserve = len(_ending(next_url(shape.origin, shape.path, MAX_LIMIT, MAX_ID)))
        self.largest = 0  # the largest page written so far, in bytes

    def read(self, token_sql: str | None) -> Rendered:
        self._check_columns()
        page, limit = self.shape.page, self.shape.page.limit
        body = _new_body(self.resource)
        if limit is not None:  # one page, one statement
            first = self._page(page.after, limit, token_sql)
            body.write(first.json.encode())
            link = self._next(limit, first) if first.more else None
            body.write(('],"next":' + json.dumps(link) + "}").encode())
            return Rendered(body, first.rows, link, first.identity, first.token)
        large = _large.setdefault(self.db, set())
        first = None
        if self.resource not in large:
            first = self._page(page.after, PAGE_ROWS, token_sql, body, snapshot=True)
            if not first.more or first.rows < PAGE_ROWS:  # the whole table, or the byte limit
                return self._end(body, first, first, first.rows)
            large.add(self.resource)
        rendered = self._in_snapshot(lambda: self._rest(body, first, token_sql))
        if rendered.rows <= PAGE_ROWS and not rendered.at_limit:
            large.discard(self.resource)
        return rendered

    def _rest(self, body: Spool, first: Page | None, token_sql: str | None) -> Rendered:
        """Inside the transaction: page 1 unless the statement before read it in this very
        snapshot, then the pages after it."""
        if first is not None:
            [(snapshot,)] = _run(self.db, self.conn, self.watch, statements.SNAPSHOT)
            if snapshot != first.snapshot or self.db.session.pooler is not None:
                first = None
        if first is None:
            body = _new_body(self.resource)
            first = self._page(self.shape.page.after, PAGE_ROWS, token_sql, body)
        rows, last = first.rows, first
        while last.more and last.rows == PAGE_ROWS:
            page = self._page(last.last_id or 0, PAGE_ROWS, None, body, comma=True)
            if page.rows == 0:  # nothing more fits: end at the previous page
                break
            rows, last = rows + page.rows, page
        return self._end(body, first, last, rows)

    def _end(self, body: Spool, first: Page, last: Page, rows: int) -> Rendered:
        link = None
        if last.more:  # ended at the byte limit: `next` in the body and the Link header
            link = self._next(MAX_LIMIT, last)
            body.write(_ending(link))
        else:
            body.write(b"]}")
        return Rendered(body, rows, link, first.identity, first.token, at_limit=link is not None)

    def _page(
        self,
        after: int,
        limit: int,
        token_sql: str | None,
        body: Spool | None = None,
        snapshot: bool = False,
        comma: bool = False,
    ) -> Page:
        """One page; written to `body` (after a comma if `comma`) if given, with the byte
        budget its room allows. A page that turns out larger than the room left (rows of
        unusual size) is read again with the budget, the one case a page is read twice."""
        if body is None:
            return self._fetch(after, limit, token_sql, None, False, snapshot)
        room = self.max_bytes - body.size - self.reserve - comma
        if room <= 0 and comma:  # not even a comma fits: end at the page before
            return Page(0, None, "", more=True)
        budget = room if room < 2 * self.largest else None
        page = self._fetch(after, limit, token_sql, budget, not comma, snapshot)
        data = page.json.encode()
        if budget is None and len(data) > room:
            page = self._fetch(after, limit, token_sql, room, not comma, snapshot)
            data = page.json.encode()
        self.largest = max(self.largest, len(data))
        if page.rows:
            body.write(b"," + data if comma else data)
        return page

    def _fetch(
        self,
        after: int,
        limit: int,
        token_sql: str | None,
        budget: int | None,
        first: bool,
        snapshot: bool,
    ) -> Page:
        """One page in one round trip, with the validator's token (and the snapshot) read in
        the same statement when asked."""
        sql = statements.page_sql(self.resource, after, limit, budget, first)
        if snapshot:
            sql = statements.with_snapshot(sql)
        stats = request_stats.current()
        stats.queries += 1
        stats.pages += 1
        try:
            with self.watch.statement(self.conn):
                if token_sql is None:
                    [(*snap, rows, last_id, text, more)] = self.db.fetch(self.conn, sql)
                    return Page(rows, last_id, text, more, snapshot=snap[0] if snap else None)
                identity, token, (*snap, rows, last_id, text, more) = validator.read(
                    self.db,
                    self.conn,
                    lambda with_id: validator.render_sql(sql, token_sql, with_id),
                )
        except ServerError as exc:
            if exc.sqlstate == UNDEFINED_COLUMN:  # dropped since the columns were checked
                raise ConfigError(
                    self.resource.columns_setting, f"{exc.message}: the table no longer has it"
                ) from exc
            raise
        return Page(rows, last_id, text, more, identity, token, snap[0] if snap else None)

    def _next(self, limit: int, page: Page) -> str | None:
        if page.last_id is None:
            return None
        return next_url(self.shape.origin, self.shape.path, limit, page.last_id)

    def _check_columns(self) -> None:
        """Fail with a configuration error naming any configured column the table lacks."""
        checked = _checked.setdefault(self.db, set())
        if self.resource not in checked:
            rows = _run(self.db, self.conn, self.watch, statements.columns_sql(self.resource))
            statements.check_columns(self.resource, {row[0] for row in rows})
            checked.add(self.resource)

    def _in_snapshot(self, work: Callable[[], T]) -> T:
        """`work()` inside one REPEATABLE READ READ ONLY transaction. On any failure the
        transaction is rolled back, or the connection discarded if even that fails, so no
        connection goes back to the pool inside a transaction."""
        _run(self.db, self.conn, self.watch, statements.BEGIN)
        try:
            result = work()
        except BaseException:
            if self.conn.dbapi_connection is not None:  # not already discarded
                try:
                    self.db.fetch(self.conn, statements.ROLLBACK)
                except Exception:  # noqa: BLE001 - the first failure is the one to answer
                    self.conn.invalidate()
            raise
        _run(self.db, self.conn, self.watch, statements.COMMIT)
        return result


def _new_body(resource: Resource) -> Spool:
    """A spool holding the envelope's head: `{"users":[`."""
    body = Spool()
    body.write(("{" + json.dumps(resource.name) + ":[").encode())
    return body


def _ending(link: str) -> bytes:
    return ('],"next":' + json.dumps(link) + "}").encode()
