"""The capacity planner's command line: safe --max-instances/--concurrency/THREADS for a database.

python -m devtools.plan --max-connections 25 --reserved 3 --other 2
PLAN_DATABASE_URL="$OWNER_URL" python -m devtools.plan      # reads them from the server
"""

from __future__ import annotations

import argparse
import os
import sys

from devtools import seed
from lib.postgres.capacity import OVERSHOOT, Plan, read_budget


def read_server(url: str) -> tuple[int, int, int]:
    """max_connections, reserved connections and other clients (all but this one), live."""
    conn = seed.connect(url)
    try:
        max_connections, reserved, _, everyone = read_budget(conn, "")
    finally:
        conn.close()
    return max_connections, reserved, everyone - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("PLAN_DATABASE_URL"),
        help="read max_connections, reserved and other clients live (default: "
        "$PLAN_DATABASE_URL; the environment keeps a password out of shell history and ps)",
    )
    parser.add_argument("--max-connections", type=int, default=25, help="default: db-f1-micro")
    parser.add_argument("--reserved", type=int, default=3, help="superuser_reserved_connections")
    parser.add_argument("--other", type=int, default=0, help="connections of other clients")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--max-overflow", type=int, default=0)
    parser.add_argument("--overshoot", type=float, default=OVERSHOOT)
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="database instances the reads spread over: primary + read replicas, or the "
        "nodes of an AlloyDB read pool",
    )
    args = parser.parse_args(argv)
    if args.url:
        args.max_connections, args.reserved, args.other = read_server(args.url)
    plan = Plan(
        args.max_connections,
        args.reserved,
        args.other,
        args.workers,
        args.pool_size,
        args.max_overflow,
        args.overshoot,
        args.instances,
    )
    print(plan.explain())
    return 0 if plan.max_instances > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
