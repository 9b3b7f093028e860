"""The listing's statements as SQL text: pure functions of (resource, schema, after, limit).

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


def literal(value: int | str) -> str:
    """SQL text for one value: an int as its digits, a str as a quoted identifier."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))  # int(): an int subclass (IntEnum) could print as anything
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    raise TypeError(f"not an int or an identifier: {type(value).__name__}")


def table_name(resource: Resource, schema: str | None) -> str:
    """The table as the statements write it: in DATABASE_URL's `schema` (a plain identifier,
    lib/database_url/uri.py) if one is named, else bare, found on the search_path."""
    return f"{literal(schema)}.{literal(resource.table)}" if schema else resource.table


def page_sql(resource: Resource, schema: str | None, after: int, limit: int) -> str:
    """One page: (rows, last key, the rows' JSON objects comma-separated, more rows follow)."""
    if not isinstance(after, int) or not isinstance(limit, int):  # a str would be an identifier
        raise TypeError("after and limit must be ints")
    return _page_template(resource, schema).format(after=literal(after), limit=literal(limit))


@functools.lru_cache(maxsize=32)
def _page_template(resource: Resource, schema: str | None) -> str:
    """The page statement but its two ints, built once per resource and schema."""
    table, key = table_name(resource, schema), resource.key
    fields = ", ".join(f"page.{literal(c)}" for c in resource.columns)
    selected = ", ".join(literal(c) for c in dict.fromkeys((key, *resource.columns)))
    # row_to_json of a LATERAL row: compact JSON, keys in the columns' order (USERS_COLUMNS),
    # only those keys even when the key is not served. {after} and {limit}: ints (literal).
    # Whether more rows follow: one index probe past the page's last id, a subquery on the
    # aggregate (no CTE read twice). ORDER BY ... LIMIT 1 keeps it on the primary key:
    # as EXISTS the planner picks a sequential scan from the table's start, which grows
    # with the cursor (+2 ms a page at id 90,000). Measured in BENCHMARKS.md: cheaper than
    # `LIMIT limit + 1`, whose row_number() to leave the extra row out costs ~20% more.
    return (
        f"SELECT count(*), max(page.{key}), "  # noqa: S608 - values only through literal()
        f"coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY page.{key}), ''), "
        f"(SELECT p.{key} FROM {table} p WHERE p.{key} > max(page.{key}) ORDER BY p.{key} "
        "LIMIT 1) IS NOT NULL "
        f"FROM (SELECT {selected} FROM {table} WHERE {key} > {{after}} "
        f"ORDER BY {key} LIMIT {{limit}}) AS page, "
        f"LATERAL (SELECT {fields}) AS r"
    )


def columns_sql(resource: Resource, schema: str | None) -> str:
    """The names of the table's columns (none when the table does not exist)."""
    return (
        "SELECT attname FROM pg_attribute "  # noqa: S608 - the table as table_name() writes it
        f"WHERE attrelid = to_regclass('{table_name(resource, schema)}') "
        "AND attnum > 0 AND NOT attisdropped"
    )


def check_columns(resource: Resource, schema: str | None, existing: Collection[str]) -> None:
    """Fail with a configuration error naming the setting and any column the table lacks."""
    table = table_name(resource, schema)
    if not existing:
        raise ConfigError(
            resource.columns_setting, f"table '{table}' does not exist or has no columns"
        )
    for column in (resource.key, *resource.columns):
        if column not in existing:
            raise ConfigError(
                resource.columns_setting, f"column '{column}' does not exist in table '{table}'"
            )
