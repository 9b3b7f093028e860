"""What a fingerprint costs PostgreSQL, against the render and the seed's plain SELECT.

`python -m bench.fingerprint`: an embedded PostgreSQL, a table of 1,000 users (pages of 100
and 1,000 rows, the whole table as the seed reads it) then of 5,000 (a page of 5,000 rows),
every statement of lib/listing/fingerprint.py beside statements.page_sql, the snapshot probe and
count(*). The figure is the CPU of the backend running the statement (its
/proc/<pid>/schedstat, nanoseconds: robust on a shared machine, where latency is not),
per statement, the median of interleaved rounds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import pg8000.native

from devtools import seed
from devtools.devdb import EmbeddedPostgres
from lib.listing import fingerprint, statements, validator
from lib.resource import Resource

RESOURCE = Resource("users", "users", ("id", "email", "name", "created_at"))
SEED = fingerprint.new_seed()
MAX_STATEMENTS = 100_000  # per figure: bounded in count as in time


def _count(limit: int) -> str:
    return f"SELECT count(*) FROM (SELECT id FROM users WHERE id > 0 ORDER BY id LIMIT {limit}) p"


def _unmixed(limit: int) -> str:
    """The content hash without the outer mix (not exact: see lib/listing/fingerprint.py)."""
    fields = ", ".join(f"page.{c}" for c in RESOURCE.columns)
    row_hash = f"hash_record_extended(ROW({fields}), ({SEED})::int8)"
    aggregate = fingerprint._aggregate(RESOURCE, 0, limit, row_hash)
    return f"SELECT {aggregate} || ':' || {statements.served_types(RESOURCE)}"


# name -> the statement for a page of `limit` rows (some ignore it).
STATEMENTS: dict[str, Callable[[int], str]] = {
    "seed: SELECT * FROM users (whole table)": lambda _: "SELECT * FROM users",
    "render (statements.page_sql)": lambda n: statements.page_sql(RESOURCE, 0, n),
    "snapshot probe (validator)": lambda _: validator.probe_sql(validator.SNAPSHOT, False),
    "count(*) of the page": _count,
    "count(*) of the table": lambda _: "SELECT count(*) FROM users",
    "(ctid, xmin) + count + next + types": lambda n: fingerprint.tuples_sql(
        RESOURCE, None, 0, n, SEED
    ),
    "content: record hash, mixed + count + next + types (chosen)": lambda n: (
        fingerprint.content_sql(RESOURCE, 0, n, SEED)
    ),
    "content: record hash, unmixed (not exact)": _unmixed,
    "rendered: hash of row_to_json text + count + next": lambda n: fingerprint.rendered_sql(
        RESOURCE, None, 0, n, SEED
    ),
    "types alone (pg_attribute)": lambda _: "SELECT " + statements.served_types(RESOURCE),
}


def cpu_ms(conn: pg8000.native.Connection, schedstat: Path, sql: str, count: int) -> float:
    """The backend's CPU per statement over `count` runs of `sql` (after one to warm up)."""
    conn.run(sql)
    before = int(schedstat.read_text().split()[0])
    for _ in range(min(count, MAX_STATEMENTS)):
        conn.run(sql)
    return (int(schedstat.read_text().split()[0]) - before) / 1e6 / count


def measure(rounds: int, budget_ms: float) -> dict[tuple[str, int, int], float]:
    """(statement, users, page rows) -> median CPU ms per statement."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-fp"))
    postgres = EmbeddedPostgres(workdir / "data").start()
    figures: dict[tuple[str, int, int], list[float]] = {}
    try:
        admin = seed.connect(postgres.url())
        seed.create_schema(admin)
        conn = pg8000.native.Connection(
            "postgres", password="postgres", host="127.0.0.1", port=postgres.port
        )
        [[pid]] = conn.run("SELECT pg_backend_pid()")
        schedstat = Path(f"/proc/{pid}/schedstat")
        for users, limits in ((1_000, (100, 1_000)), (5_000, (5_000,))):
            seed.seed_users(admin, users, progress=False)
            admin.cursor().execute("VACUUM ANALYZE users")
            for _ in range(rounds):
                for limit in limits:
                    for name, make in STATEMENTS.items():
                        sql = make(limit)
                        count = max(20, int(budget_ms / max(limit / 1000, 0.05)))
                        figures.setdefault((name, users, limit), []).append(
                            cpu_ms(conn, schedstat, sql, count)
                        )
        conn.close()
        admin.close()
    finally:
        postgres.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)
    return {key: statistics.median(values) for key, values in figures.items()}


def render(figures: dict[tuple[str, int, int], float], rounds: int) -> str:
    cells = [(1_000, 100), (1_000, 1_000), (5_000, 5_000)]
    seed_1k = figures[("seed: SELECT * FROM users (whole table)", 1_000, 1_000)]
    head = " | ".join(f"{u:,} users, {n:,}-row page" for u, n in cells)
    lines = [
        f"Backend CPU per statement, ms (median of {rounds} interleaved rounds), and x the "
        "seed's `SELECT * FROM users` at 1,000 users; per row: µs of CPU per page row.",
        "",
        f"| statement | {head} | x seed (1,000-row page) | µs/row (5,000-row page) |",
        "|---|" + "---:|" * (len(cells) + 2),
    ]
    for name in STATEMENTS:
        values = " | ".join(f"{figures[(name, u, n)]:.3f}" for u, n in cells)
        ratio = figures[(name, 1_000, 1_000)] / seed_1k
        per_row = figures[(name, 5_000, 5_000)] / 5_000 * 1000
        lines.append(f"| {name} | {values} | {ratio:.2f}x | {per_row:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget-ms", type=float, default=200.0, help="per figure and round")
    args = parser.parse_args(argv)
    print(render(measure(args.rounds, args.budget_ms), args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
