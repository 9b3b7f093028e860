"""The validator: a token that is equal only while the served rows are exactly the same.

In a read-committed statement, `pg_current_snapshot()` is that statement's own snapshot, the
one its rows are read with. Any transaction that writes gets an xid and so changes the
snapshot text once it commits (or aborts); an idle cluster keeps it. xid8 values never
repeat on one server's history, so equal text on the same server means the same visible
data. Snapshot text alone does not tell servers apart, so every token is read together with
the server's identity: `system_identifier` (what a cluster and its base backups share) and
`pg_postmaster_start_time()` (new at every restart or rewind; a promoted replica keeps its
own, and never repeats its own snapshots).

The render returns its token in the same statement as its rows (`render_sql`); a probe
(`probe_sql`) returns the current one for the price of a round trip. `system_identifier`
reads a file, so it is read once per physical connection, except behind a transaction
pooler, where every statement may reach another server and so carries its own.

With the opt-in trigger of sql/cache_version.sql, the token is instead the table's version
row (bumped by every writing statement on the table) plus the table's and the trigger's
catalog row versions: writes to other tables then no longer invalidate it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

from lib.listing import statements
from lib.postgres.database import Database
from lib.resource import Resource

SNAPSHOT = "pg_current_snapshot()::text"
START_TIME = "pg_postmaster_start_time()::text"
SYSTEM_ID = "(pg_control_system()).system_identifier::text"
_SYSTEM_ID_KEY = "validator.system_id"


@dataclass(frozen=True)
class Identity:
    """Which server, in which life, a token was read from."""

    system_id: str
    started: str


def version_table(resource: Resource) -> str:
    """The opt-in trigger's version table, next to the served table (sql/cache_version.sql)."""
    name = f"{resource.table}_version"
    return f"{statements.literal(resource.schema)}.{name}" if resource.schema else name


def trigger_token_sql(resource: Resource) -> str:
    """The trigger validator's token: NULL (never equal, so never served from the cache)
    unless the version row exists and the trigger is enabled. The catalog rows' xmin change
    with most ALTER TABLEs and any trigger change, which the version row would not see; the
    served columns' types cover a retype that rewrites nothing (timestamptz to timestamp
    under UTC changes neither pg_class nor a row, yet every value renders differently)."""
    table = statements.table_name(resource)
    return (
        f"(SELECT 'v' || v.version || ':' || c.xmin || ':' || t.xmin "  # noqa: S608 - names from Resource
        f"FROM {version_table(resource)} v, pg_class c, pg_trigger t "
        f"WHERE c.oid = '{table}'::regclass AND t.tgrelid = c.oid "
        f"AND t.tgname = '{resource.table}_version_bump' AND t.tgenabled IN ('O', 'A')) "
        f"|| ':' || {statements.served_types(resource)}"
    )


def find_sql(resource: Resource) -> str:
    """One round trip: (may the role run the validator's functions, is the opt-in migration
    installed and readable)."""
    table = version_table(resource)
    return (
        "SELECT has_function_privilege('pg_control_system()', 'EXECUTE') "
        "AND has_function_privilege('pg_current_snapshot()', 'EXECUTE') "
        "AND has_function_privilege('pg_postmaster_start_time()', 'EXECUTE'), "
        f"to_regclass('{table}') IS NOT NULL "
        f"AND has_table_privilege(to_regclass('{table}'), 'SELECT')"
    )


def probe_sql(token: str, with_system_id: bool) -> str:
    """(token, start time, system_identifier or NULL): the whole probe, one round trip."""
    return f"SELECT {token}, {START_TIME}, {SYSTEM_ID if with_system_id else 'NULL'}"


def render_sql(page_sql: str, token: str, with_system_id: bool) -> str:
    """(token, start time, system_identifier or NULL, the page's columns): the validator read
    in the page's own statement."""
    system_id = SYSTEM_ID if with_system_id else "NULL"
    return f"SELECT {token}, {START_TIME}, {system_id}, page.* FROM ({page_sql}) AS page"  # noqa: S608 - our statements


def read(
    db: Database, conn: PoolProxiedConnection, sql: Callable[[bool], str]
) -> tuple[Identity, str | None, list[Any]]:
    """Run the statement `sql(with_system_id)` (`probe_sql` or `render_sql`), whose first
    columns are the token, the start time and the system_identifier: (the server's identity,
    the token, the other columns). The system_identifier is kept with the physical
    connection (one server for its life) and read again only behind a transaction pooler,
    where each statement may reach another server."""
    known = None if db.session.pooler is not None else conn.info.get(_SYSTEM_ID_KEY)
    [(token, started, system_id, *rest)] = db.fetch(conn, sql(known is None))
    if known is None:
        conn.info[_SYSTEM_ID_KEY] = known = system_id
    return Identity(system_id=known, started=started), token, rest
