"""The page statement against its alternatives: pgbench latency and the backend's CPU.

Latency from pgbench (one client, count-bounded). CPU from the backend of our own
connection running the same statement (/proc/<pid>/schedstat, nanoseconds): it stays
meaningful on a busy machine, where latency does not.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pg8000.native

from devtools.devdb import EmbeddedPostgres, bin_dir
from lib.listing.statements import page_sql
from lib.resource import Resource

COLUMNS = ("id", "email", "name", "created_at")
LIMITS = (10, 1_000, 5_000)
_C = ", ".join(COLUMNS)
_P = ", ".join(f"page.{c}" for c in COLUMNS)
# The statements compared; {after} and {limit} filled in per run.
STATEMENTS = {
    "page statement (this function)": None,  # lib/listing/statements.page_sql
    "before #11: CTE read twice + EXISTS": (
        f"WITH page AS (SELECT {_C} FROM users WHERE id > {{after}} ORDER BY id LIMIT {{limit}}) "
        "SELECT count(*), max(page.id), "
        "coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY page.id), ''), "
        "EXISTS (SELECT 1 FROM users WHERE id > (SELECT max(id) FROM page)) "
        f"FROM page, LATERAL (SELECT {_P}) AS r"
    ),
    "LIMIT n+1, row_number() drops the extra row": (
        "SELECT count(*) FILTER (WHERE n <= {limit}), max(page.id) FILTER (WHERE n <= {limit}), "
        "coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY page.id) "
        "FILTER (WHERE n <= {limit}), ''), count(*) > {limit} "
        f"FROM (SELECT {_C}, row_number() OVER (ORDER BY id) AS n FROM users "
        "WHERE id > {after} ORDER BY id LIMIT {limit} + 1) AS page, "
        f"LATERAL (SELECT {_P}) AS r"
    ),
    "json_build_object instead of row_to_json": (
        "SELECT count(*), max(id), coalesce(string_agg(json_build_object("
        + ", ".join(f"'{c}', {c}" for c in COLUMNS)
        + ")::text, ',' ORDER BY id), ''), "
        "(SELECT p.id FROM users p WHERE p.id > max(page.id) ORDER BY p.id LIMIT 1) IS NOT NULL "
        f"FROM (SELECT {_C} FROM users WHERE id > {{after}} ORDER BY id LIMIT {{limit}}) AS page"
    ),
    "json_agg (the 20-line function's)": (
        "SELECT json_agg(u ORDER BY id)::text "
        "FROM (SELECT * FROM users WHERE id > {after} ORDER BY id LIMIT {limit}) AS u"
    ),
    "plain SELECT, no JSON (the seed's)": (
        "SELECT * FROM users WHERE id > {after} ORDER BY id LIMIT {limit}"
    ),
}


@dataclass(frozen=True)
class Figure:
    latency_ms: float
    cpu_ms: float


def sql(name: str, after: int, limit: int) -> str:
    template = STATEMENTS[name]
    if template is None:
        return page_sql(Resource("users", "users", COLUMNS), after, limit)
    return template.format(after=int(after), limit=int(limit))


def pgbench_ms(postgres: EmbeddedPostgres, statement: str, transactions: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-sql") as tmp:
        script = Path(tmp) / "statement.sql"
        script.write_text(statement + ";\n")
        command = [str(bin_dir() / "pgbench"), "-n", "-t", str(transactions), "-f", str(script)]
        command += ["-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres", "postgres"]
        out = subprocess.run(
            command,
            env={**os.environ, "PGPASSWORD": "postgres"},
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
    return float(re.search(r"latency average = ([\d.]+) ms", out).group(1))


def compare(postgres: EmbeddedPostgres, after: int, rounds: int) -> dict[tuple[str, int], Figure]:
    """Every statement at every page size, interleaved; the best of `rounds` (least disturbed)."""
    conn = pg8000.native.Connection(
        "postgres", password="postgres", host="127.0.0.1", port=postgres.port
    )
    [[pid]] = conn.run("SELECT pg_backend_pid()")
    schedstat = Path(f"/proc/{pid}/schedstat")
    best: dict[tuple[str, int], Figure] = {}
    try:
        for _ in range(rounds):
            for limit in LIMITS:
                for name in STATEMENTS:
                    statement, count = sql(name, after, limit), max(20, 20_000 // limit)
                    conn.run(statement)  # warm
                    before = int(schedstat.read_text().split()[0])
                    for _ in range(count):
                        conn.run(statement)
                    cpu_ms = (int(schedstat.read_text().split()[0]) - before) / 1e6 / count
                    fig = Figure(pgbench_ms(postgres, statement, count), cpu_ms)
                    old = best.get((name, limit))
                    if old is None or fig.cpu_ms < old.cpu_ms:
                        best[(name, limit)] = fig
    finally:
        conn.close()
    return best
