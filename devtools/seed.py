"""Schema and sample data: create `users`, seed N deterministic users fast, create the reader role.

    python -m devtools.seed --url postgresql://postgres:...@127.0.0.1:5432/postgres --users 1000000

Rows are generated inside PostgreSQL (`generate_series`) in batches, so a million users take
seconds and no row crosses the network. User i is always the same (email, name, created_at),
so tests and benchmarks can compare outputs across runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pg8000.dbapi
import pg8000.native

from lib.database_url import connect as connect_url
from lib.database_url import uri as database_url

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
READER_ROLE = "users_reader"
BATCH = 100_000

# Names include non-ASCII on purpose: the JSON path must keep them intact.
_INSERT = """
INSERT INTO users (email, name, created_at)
SELECT 'user' || i || '@example.com',
       (ARRAY['Ada','José','Zoë','Łukasz','Mei','Ngozi','Søren','Aarav'])[1 + i % 8] || ' ' ||
       (ARRAY['Lovelace','García','Müller','Nowak','Chen','Okafor','Kierkegaard','Patel'])
         [1 + (i / 8) % 8],
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
FROM generate_series({start}, {stop}) AS i
"""


def connect(url: str) -> pg8000.dbapi.Connection:
    """An owner's connection (autocommit), with the function's own reading of the URL."""
    conn = connect_url.connect(database_url.parse(url), timeout=10)
    conn.autocommit = True
    return conn


def seed_server(url: str, users: int) -> None:
    """A fresh server made ready: the schema and `users` sample users."""
    conn = connect(url)
    create_schema(conn)
    seed_users(conn, users, progress=False)
    conn.close()


def create_schema(conn: pg8000.dbapi.Connection) -> None:
    conn.cursor().execute((SQL_DIR / "schema.sql").read_text())


def create_reader(conn: pg8000.dbapi.Connection, password: str) -> None:
    """The least-privilege role (sql/readonly_role.sql), with a password for password login."""
    cursor = conn.cursor()
    cursor.execute((SQL_DIR / "readonly_role.sql").read_text())
    cursor.execute(f"ALTER ROLE {READER_ROLE} PASSWORD {pg8000.native.literal(password)}")


def count_users(conn: pg8000.dbapi.Connection) -> int:
    cursor = conn.cursor()
    cursor.execute("SELECT count(*) FROM users")
    return cursor.fetchone()[0]


def seed_users(conn: pg8000.dbapi.Connection, total: int, progress: bool = True) -> int:
    """Insert users until the table holds `total` (never removes any); how many were added."""
    have = count_users(conn)
    cursor = conn.cursor()
    started = time.monotonic()
    for start in range(have + 1, total + 1, BATCH):
        stop = min(start + BATCH - 1, total)
        cursor.execute(_INSERT.format(start=int(start), stop=int(stop)))
        if progress and total - have > BATCH:
            rate = (stop - have) / max(time.monotonic() - started, 1e-6)
            print(f"  seeded {stop:,}/{total:,} users ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    if total > have:
        cursor.execute("ANALYZE users")
    return max(total - have, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", required=True, help="an owner's URL (not the function's read-only one)"
    )
    parser.add_argument(
        "--users", type=int, default=1000, help="seed until the table holds this many"
    )
    parser.add_argument(
        "--reader-password", help=f"also create the {READER_ROLE} role with this password"
    )
    args = parser.parse_args(argv)
    conn = connect(args.url)
    try:
        create_schema(conn)
        added = seed_users(conn, args.users)
        if args.reader_password:
            create_reader(conn, args.reader_password)
        held = count_users(conn)
    finally:
        conn.close()
    print(f"users table ready: {held:,} users ({added:,} added)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
