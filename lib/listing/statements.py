"""The listing's statements as SQL text: pure functions of (resource, after, limit, budget).

PostgreSQL renders the JSON, Python only passes text through. Each page is one statement in
one round trip: the server selects a keyset page by the resource's key, renders every row
with `row_to_json`, joins them into one text and says whether more rows follow (one index
probe past the page). Turning rows into Python objects and back into JSON would cost ~10x
more CPU than the whole rest of the request.

The values are written into the text, not sent as bind parameters: without parameters
pg8000 uses the simple-query protocol, one round trip with nothing prepared, which also works
behind transaction poolers that cannot hold prepared statements. Every value goes through
`literal` (an int, or a quoted identifier: the configured columns and schema); the table and
key are the Resource's own plain names, written bare (lib/resource.py checks them).
"""

from __future__ import annotations

import functools
from collections.abc import Collection

from lib.errors import ConfigError
from lib.resource import Resource

# One snapshot for every page of a listing (lib/listing/pages.py); READ ONLY also lets a
# standby serve it. A transaction pooler keeps one server connection for the transaction.
BEGIN = "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
SNAPSHOT = "SELECT pg_current_snapshot()::text"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"


def literal(value: int | str) -> str:
    """SQL text for one value: an int as its digits, a str as a quoted identifier."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))  # int(): an int subclass (IntEnum) could print as anything
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    raise TypeError(f"not an int or an identifier: {type(value).__name__}")


def table_name(resource: Resource) -> str:
    """The table as the statements write it: in its schema (a plain identifier,
    lib/database_url/uri.py) if one is named, else bare, found on the search_path."""
    table = resource.table
    return f"{literal(resource.schema)}.{literal(table)}" if resource.schema else table


def page_sql(
    resource: Resource, after: int, limit: int, budget: int | None = None, first: bool = False
) -> str:
    """One page: (rows, last key, the rows' JSON objects comma-separated, more rows follow).

    With a `budget`, only the first rows whose joined JSON fits in `budget` bytes (at least
    one on a response's `first` page, so that its `next` moves on): the listing then ends
    before its byte limit without sending what it cannot."""
    for value in (after, limit, budget or 0):
        if not isinstance(value, int) or isinstance(value, bool):  # a str: an identifier
            raise TypeError("after, limit and budget must be ints")
    if budget is None:
        return _page_template(resource).format(after=literal(after), limit=literal(limit))
    return _budget_template(resource).format(
        after=literal(after), limit=literal(limit), budget=literal(budget), least=int(first)
    )


def with_snapshot(sql: str) -> str:
    """A statement's columns after its own snapshot's text (the snapshot read with them)."""
    return f"SELECT pg_current_snapshot()::text, page.* FROM ({sql}) AS page"  # noqa: S608


def _rows(resource: Resource) -> tuple[str, str]:
    """The page's rows (`page`, with the key and the served columns) and the row object `r`
    (only the served columns, in the order of USERS_COLUMNS); {after} and {limit}: ints."""
    table, key = table_name(resource), resource.key
    fields = ", ".join(f"page.{literal(c)}" for c in resource.columns)
    selected = ", ".join(literal(c) for c in dict.fromkeys((key, *resource.columns)))
    page = (
        f"(SELECT {selected} FROM {table} WHERE {key} > {{after}} "  # noqa: S608 - literal()
        f"ORDER BY {key} LIMIT {{limit}}) AS page"
    )
    return page, f"LATERAL (SELECT {fields}) AS r"


def _more(resource: Resource, last: str) -> str:
    """Whether rows follow key `last`: one index probe past it, a subquery on the aggregate
    (no CTE read twice). ORDER BY ... LIMIT 1 keeps it on the primary key: as EXISTS the
    planner picks a sequential scan from the table's start, which grows with the cursor
    (+2 ms a page at id 90,000). Cheaper than `LIMIT limit + 1`, whose row_number() to leave
    the extra row out costs ~20% more (BENCHMARKS.md)."""
    table, key = table_name(resource), resource.key
    return (
        f"(SELECT p.{key} FROM {table} p WHERE p.{key} > {last} "  # noqa: S608 - literal()
        f"ORDER BY p.{key} LIMIT 1) IS NOT NULL"
    )


@functools.lru_cache(maxsize=32)
def _page_template(resource: Resource) -> str:
    """The page statement but its ints, built once per resource. row_to_json of a LATERAL
    row: compact JSON, keys in the columns' order, only those keys even when the key is not
    served."""
    page, row = _rows(resource)
    key = resource.key
    return (
        f"SELECT count(*), max(page.{key}), "  # noqa: S608 - values only through literal()
        f"coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY page.{key}), ''), "
        f"{_more(resource, f'max(page.{key})')} FROM {page}, {row}"
    )


@functools.lru_cache(maxsize=32)
def _budget_template(resource: Resource) -> str:
    """The page statement that stops at {budget} bytes: a running sum of each row's JSON
    length plus its comma keeps the rows that fit ({least} = 1: the first one always)."""
    page, row = _rows(resource)
    key = resource.key
    return (
        "SELECT count(*), max(fit.k), "  # noqa: S608 - values only through literal()
        "coalesce(string_agg(fit.j, ',' ORDER BY fit.k), ''), "
        f"{_more(resource, 'max(fit.k)')} FROM ("
        "SELECT k, j, sum(octet_length(j) + 1) OVER (ORDER BY k) AS upto, "
        "row_number() OVER (ORDER BY k) AS n FROM ("
        f"SELECT page.{key} AS k, row_to_json(r)::text AS j FROM {page}, {row}) AS rendered"
        ") AS fit WHERE fit.upto <= {budget} + 1 OR fit.n <= {least}"
    )


def served_types(resource: Resource) -> str:
    """An expression: the key's and served columns' names, types, typmods and collations, as
    text (a scalar subquery on pg_attribute's (attrelid, attname) index). It changes with an
    ALTER that changes how a column renders, even one that rewrites no row."""
    names = ", ".join(f"'{c}'" for c in dict.fromkeys((resource.key, *resource.columns)))
    return (
        "(SELECT string_agg(attname || '=' || atttypid || '/' || atttypmod || '/' || "  # noqa: S608
        "attcollation, ',' ORDER BY attnum) FROM pg_attribute "
        f"WHERE attrelid = '{table_name(resource)}'::regclass "
        f"AND attname IN ({names}) AND NOT attisdropped)"
    )


def columns_sql(resource: Resource) -> str:
    """The names of the table's columns (none when the table does not exist)."""
    return (
        "SELECT attname FROM pg_attribute "  # noqa: S608 - the table as table_name() writes it
        f"WHERE attrelid = to_regclass('{table_name(resource)}') "
        "AND attnum > 0 AND NOT attisdropped"
    )


def check_columns(resource: Resource, existing: Collection[str]) -> None:
    """Fail with a configuration error naming the setting and any column the table lacks."""
    table = table_name(resource)
    if not existing:
        raise ConfigError(
            resource.columns_setting, f"table '{table}' does not exist or has no columns"
        )
    for column in (resource.key, *resource.columns):
        if column not in existing:
            raise ConfigError(
                resource.columns_setting, f"column '{column}' does not exist in table '{table}'"
            )
