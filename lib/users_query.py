"""The users query: PostgreSQL renders the JSON, Python only passes text through.

Each page is one statement in one round trip (simple-query protocol, autocommit): the
server selects a keyset page by `id`, renders every row with `row_to_json`, joins
them into one text and says whether more rows follow (one index probe past the page).
Turning rows into Python objects and back into JSON would cost ~10x more CPU than the
whole rest of the request.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Iterator
from concurrent import futures  # its thread module loads on the first streamed listing
from dataclasses import dataclass

from sqlalchemy.pool import PoolProxiedConnection
from werkzeug.datastructures import MultiDict

from lib import telemetry
from lib.config import ConfigError
from lib.engine import Database
from lib.failures import ConnectionLost

TABLE = "users"
PAGE_ROWS = 5000  # rows per round trip when streaming every user (~0.5 MB of JSON)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_PREFIX = "id:"
_LIMIT = re.compile(r"[0-9]{1,4}")  # [0-9], not \d: \d matches every Unicode digit
_CURSOR = re.compile(r"[A-Za-z0-9_-]{4,40}")  # base64url of "id:" and up to 20 digits
_ID = re.compile(r"[0-9]{1,20}")
_MAX_ID = 2**63 - 1  # bigint: a cursor past it is past every row


class BadRequest(ValueError):
    """A query parameter is invalid; the message says which and why."""


@dataclass(frozen=True)
class PageRequest:
    """What the caller asked for: every user (limit None), or one page after a cursor."""

    after: int = 0
    limit: int | None = None

    @classmethod
    def from_args(cls, args: MultiDict[str, str]) -> PageRequest:
        unknown = sorted(set(args) - {"limit", "cursor"})
        if unknown:
            raise BadRequest(
                f"unknown query parameter {bounded(unknown[0])}; allowed: limit, cursor"
            )
        for name in ("limit", "cursor"):
            if len(args.getlist(name)) > 1:
                raise BadRequest(f"{name} is given more than once")
        after = decode_cursor(args["cursor"]) if "cursor" in args else 0
        if "limit" not in args:
            return cls(after=after, limit=DEFAULT_LIMIT if "cursor" in args else None)
        # ASCII digits only: str.isdigit() is true for superscripts that int() refuses, int()
        # reads other scripts' digits, and it refuses more than 4,300 digits at all.
        if not _LIMIT.fullmatch(args["limit"]) or not 1 <= int(args["limit"]) <= MAX_LIMIT:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        return cls(after=after, limit=int(args["limit"]))


def bounded(text: str, most: int = 40) -> str:
    """A quoted excerpt of client input for an error message: never echo it unbounded."""
    return repr(text if len(text) <= most else text[:most] + "...")


def encode_cursor(last_id: int) -> str:
    """Opaque to callers, so the keyset can change without breaking them."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor of ours carries; anything else (any length, any alphabet) is a 400."""
    if not _CURSOR.fullmatch(cursor):
        raise BadRequest("cursor is not one this function returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raw = ""
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not _ID.fullmatch(digits):
        raise BadRequest("cursor is not one this function returned")
    return min(int(digits), _MAX_ID)


@dataclass(frozen=True)
class Page:
    rows: int
    last_id: int | None
    json: str  # the page's user objects, comma-separated, without brackets
    more: bool  # rows with a larger id exist


class UsersQuery:
    """The statement for the configured columns, built once; columns checked on first use."""

    def __init__(self, columns: tuple[str, ...], schema: str | None = None) -> None:
        self.columns = columns
        # DATABASE_URL's `schema` (validated as a plain identifier); else the search_path's.
        self.table = f'"{schema}"."{TABLE}"' if schema else TABLE
        self.checked = False
        fields = ", ".join(f'page."{c}"' for c in columns)
        selected = ", ".join(f'"{c}"' for c in dict.fromkeys(("id", *columns)))
        # row_to_json of a LATERAL row: compact JSON, keys in USERS_COLUMNS order, only those
        # keys even when `id` is not served. {after} and {limit} are Python ints (see fetch).
        # Whether more rows follow: one index probe past the page's last id, a subquery on the
        # aggregate (no CTE read twice). ORDER BY ... LIMIT 1 keeps it on the primary key:
        # as EXISTS the planner picks a sequential scan from the table's start, which grows
        # with the cursor (+2 ms a page at id 90,000). Measured in BENCHMARKS.md: cheaper than
        # `LIMIT limit + 1`, whose row_number() to leave the extra row out costs ~20% more.
        self._sql = (
            f"SELECT count(*), max(page.id), "
            "coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY page.id), ''), "
            f"(SELECT p.id FROM {self.table} p WHERE p.id > max(page.id) ORDER BY p.id LIMIT 1) "
            "IS NOT NULL "
            f"FROM (SELECT {selected} FROM {self.table} WHERE id > {{after}} "
            "ORDER BY id LIMIT {limit}) AS page, "
            f"LATERAL (SELECT {fields}) AS r"
        )

    def check_columns(self, db: Database, conn: PoolProxiedConnection) -> None:
        """Fail with a configuration error naming any configured column the table lacks."""
        rows = db.fetch(
            conn,
            f"SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('{self.table}') "
            "AND attnum > 0 AND NOT attisdropped",
        )
        existing = {row[0] for row in rows}
        if not existing:
            raise ConfigError(
                "USERS_COLUMNS", f"table '{self.table}' does not exist or has no columns"
            )
        for column in ("id", *self.columns):
            if column not in existing:
                raise ConfigError(
                    "USERS_COLUMNS", f"column '{column}' does not exist in table '{self.table}'"
                )
        self.checked = True

    def sql(self, after: int, limit: int) -> str:
        return self._sql.format(after=int(after), limit=int(limit))

    def fetch(self, db: Database, conn: PoolProxiedConnection, after: int, limit: int) -> Page:
        """One page in one round trip (no bind parameters: pg8000 then uses simple query)."""
        [(rows, last_id, text, more)] = db.fetch(conn, self.sql(after, limit))
        return Page(rows=rows, last_id=last_id, json=text, more=more)


class Listing:
    """The users for one request: first page fetched now, the rest as the client reads.

    Holding the first page before the response starts means any database error on it
    still becomes a proper status code; later pages stream on the same connection. While
    one page goes out to the client, a helper thread already has PostgreSQL render the
    next one (one page ahead at most, each page its own autocommit statement: no snapshot
    held for the whole transfer, memory bounded by two pages).
    """

    def __init__(self, db: Database, query: UsersQuery, request: PageRequest) -> None:
        self._db = db
        self._query = query
        self._conn: PoolProxiedConnection | None = None
        self._helper: futures.ThreadPoolExecutor | None = None
        self._ahead: futures.Future[Page] | None = None  # the next page, being fetched
        self.stats = telemetry.current()  # kept: later pages stream after the handler returns
        limit = request.limit or PAGE_ROWS
        try:
            try:
                self.first = self._first_page(request.after, limit)
            except ConnectionLost:
                # The pooled connection was dead (server restart, failover, idle cut) and
                # nothing has been sent yet: one retry on a fresh connection hides it.
                self.stats.retried = True
                self.first = self._first_page(request.after, limit)
        except BaseException:
            self.close()
            raise
        if request.limit is not None or not self.first.more:
            self.close()
        else:
            self._prefetch(self.first)

    def _first_page(self, after: int, limit: int) -> Page:
        self.close()
        started = time.perf_counter()
        self._conn = self._db.checkout()
        self.stats.pool_wait_ms += (time.perf_counter() - started) * 1000
        if not self._query.checked:
            self._query.check_columns(self._db, self._conn)
        return self._fetch(self._conn, after, limit)

    def _fetch(self, conn: PoolProxiedConnection, after: int, limit: int) -> Page:
        started = time.perf_counter()
        page = self._query.fetch(self._db, conn, after, limit)
        self.stats.query_ms += (time.perf_counter() - started) * 1000
        self.stats.queries += 1
        self.stats.rows += page.rows
        return page

    def _prefetch(self, page: Page) -> None:
        """Start fetching the page after `page` on the helper thread, if more rows follow."""
        self._ahead = None
        if page.more and self._conn is not None:
            if self._helper is None:
                self._helper = futures.ThreadPoolExecutor(1, thread_name_prefix="users-prefetch")
            self._ahead = self._helper.submit(self._fetch, self._conn, page.last_id or 0, PAGE_ROWS)

    def rest(self) -> Iterator[str]:
        """JSON text of the pages after the first, each starting with a comma."""
        try:
            while self._ahead is not None:
                page = self._ahead.result()
                self._prefetch(page)
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
