"""The fingerprint of one page: a value that changes whenever the bytes of its render could.

When the snapshot has moved (a write anywhere in the cluster), a stored render may still be
exact: its rows may not have changed. Asking PostgreSQL for a fingerprint of exactly the
rows the render would read costs a fraction of rendering them again (bench/fingerprint.py,
bench/FINDINGS-26.md). Like lib/listing/statements.py, this module is pure: SQL text from the
resource, the schema, the page (after, limit) and a seed; no I/O.

What the render's bytes depend on, and what the fingerprint holds for each:

- the rows of the keyset page (the same `key > after ORDER BY key LIMIT limit` as
  statements.page_sql) and every served column's value: one 64-bit hash per row, combined
  by XOR; the key is always hashed, since the `next` cursor is the page's last key;
- the number of rows (`count(*)`, exactly);
- whether a row exists past the page's end (`next` is sent or not): the page statement's
  own probe past `max(key)`, exactly;
- how each served column renders: its type, typmod and collation from pg_attribute, exactly
  (a column retyped without a table rewrite, timestamptz to timestamp under UTC, keeps every
  stored value and its hash, but renders other text).

Why each row hash is `hashint8extended(hash_record_extended(ROW(...), seed), seed)`:
hash_record_extended combines its columns' hashes linearly (31 * h + h_next), so a XOR over
rows of it alone collides far more often than 2**-64 when values trade places between rows
(two users swapping emails: 1.3 % at 16 bits in a simulation, not 2**-16). The outer
hashint8extended mixes each row's combined value non-linearly; then distinct sets of rows
collide with probability ~2**-64 per comparison, for a seed the writers do not know.
Within a page the rows are distinct (the key is unique), so the XOR cannot cancel a row
against its twin.

The record hash is exact only for types whose hash tells apart every two values that
render differently: numeric (1.5 and 1.50 hash alike), float (0 and -0), interval ('1 day'
and '24 hours'), text under a nondeterministic collation and enums (renamed labels) are
not. `exact_types_sql` says whether the served columns are all of the exact kind; when they
are not, `rendered_sql` hashes each row's rendered JSON text instead: exact for any type,
at most of the render's cost. The (ctid, xmin) fingerprint (`tuples_sql`) is here to be
measured against, not used: it changes on VACUUM FULL, CLUSTER, freezing and every no-op
update, and two frozen tuples written at one ctid at different times look alike.

The seed is written into the statement text (the simple-query protocol, as the page
statement): it is visible to the function's own role, to superusers and pg_read_all_stats
members in pg_stat_activity, and in the server log under log_statement = all.
"""

from __future__ import annotations

import os
import secrets

from lib.listing.statements import literal, served_types, table_name
from lib.resource import Resource

# Types whose extended hash tells apart every two values that render differently (for text
# and varchar: under a deterministic collation, checked by exact_types_sql).
EXACT_TYPES = ("bool", "int2", "int4", "int8", "text", "varchar", "date", "timestamp")
EXACT_TYPES += ("timestamptz", "uuid")


def new_seed() -> int:
    """A random signed 64-bit seed: writers cannot craft rows that collide under it."""
    return secrets.randbits(64) - 2**63


_seed: list[int] = []


def process_seed() -> int:
    """This process's seed: drawn on first use, drawn again in a forked child."""
    if not _seed:
        _seed.append(new_seed())
    return _seed[0]


os.register_at_fork(after_in_child=_seed.clear)


def content_sql(resource: Resource, after: int, limit: int, seed: int) -> str:
    """The chosen fingerprint, one statement of one text column: count, XOR of the rows'
    content hashes, whether rows follow, the served columns' types."""
    return f"SELECT {content_token(resource, after, limit, seed)}"


def content_token(resource: Resource, after: int, limit: int, seed: int) -> str:
    """content_sql's value as one SQL expression: a validator token (lib/validator.py's
    probe_sql and render_sql read it beside the server's identity)."""
    s = _ints(after, limit, seed)
    fields = ", ".join(f"page.{literal(c)}" for c in _selected(resource))
    row_hash = f"hashint8extended(hash_record_extended(ROW({fields}), {s}), {s})"
    aggregate = _aggregate(resource, after, limit, row_hash)
    return f"({aggregate} || ':' || {served_types(resource)})"


def rendered_sql(resource: Resource, after: int, limit: int, seed: int) -> str:
    """The fallback for any column type: each row's hash is of its key and its rendered JSON
    text, as page_sql renders it (the type cannot change the bytes unseen)."""
    s = _ints(after, limit, seed)
    fields = ", ".join(f"page.{literal(c)}" for c in resource.columns)
    row_hash = f"hashtextextended(page.{resource.key} || ' ' || row_to_json(r)::text, {s})"
    lateral = f", LATERAL (SELECT {fields}) AS r"
    return f"SELECT {_aggregate(resource, after, limit, row_hash, lateral)}"


def tuples_sql(resource: Resource, after: int, limit: int, seed: int) -> str:
    """The (ctid, xmin) fingerprint, for comparison: each row version's place and writer."""
    s = _ints(after, limit, seed)
    row_hash = f"hashtidextended(page.ctid, page.xmin::text::int8 # {s})"
    page = (literal(resource.key), "ctid", "xmin")
    aggregate = _aggregate(resource, after, limit, row_hash, columns=page)
    return f"SELECT {aggregate} || ':' || {served_types(resource)}"


def exact_types_sql(resource: Resource) -> str:
    """Whether content_sql is exact for this table: every served column (and the key) of an
    EXACT_TYPES type, under a deterministic collation where it has one."""
    names = ", ".join(f"'{c}'" for c in _selected(resource))
    types = ", ".join(f"'{t}'::regtype" for t in EXACT_TYPES)
    return (
        "SELECT count(*) = "  # noqa: S608 - names from Resource (plain identifiers)
        f"{len(_selected(resource))} AND bool_and(a.atttypid IN ({types}) "
        "AND (a.attcollation = 0 OR coalesce(c.collisdeterministic, true))) "
        "FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation "
        f"WHERE a.attrelid = '{table_name(resource)}'::regclass "
        f"AND a.attname IN ({names}) AND NOT a.attisdropped"
    )


def _ints(after: int, limit: int, seed: int) -> str:
    """The seed as SQL; after, limit and seed checked to be ints (a str would be an
    identifier to literal())."""
    for value in (after, limit, seed):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("after, limit and seed must be ints")
    if not -(2**63) <= seed < 2**63:
        raise ValueError("the seed must fit a bigint")
    return f"({literal(seed)})::int8"


def _selected(resource: Resource) -> tuple[str, ...]:
    """The key and the served columns, each once, in page_sql's order."""
    return tuple(dict.fromkeys((resource.key, *resource.columns)))


def _aggregate(
    resource: Resource,
    after: int,
    limit: int,
    row_hash: str,
    lateral: str = "",
    columns: tuple[str, ...] | None = None,  # the page's columns as SQL: page_sql's if None
) -> str:
    """(count || ':' || XOR of row_hash || ':' || rows follow) over page_sql's keyset page,
    as a scalar subquery; the probe past the page is page_sql's own (one index probe)."""
    table, key = table_name(resource), resource.key
    columns = columns or tuple(literal(c) for c in _selected(resource))
    return (
        f"(SELECT count(*) || ':' || coalesce(bit_xor({row_hash}), 0) || ':' || "  # noqa: S608
        f"((SELECT p.{key} FROM {table} p WHERE p.{key} > max(page.{key}) ORDER BY p.{key} "
        "LIMIT 1) IS NOT NULL)::text "
        f"FROM (SELECT {', '.join(columns)} FROM {table} WHERE {key} > {literal(after)} "
        f"ORDER BY {key} LIMIT {literal(limit)}) AS page{lateral})"
    )
