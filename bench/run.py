"""`make bench`: the users function against the seed's route and its baselines, in one run.

Starts an embedded PostgreSQL, seeds each table size of bench/plan.py, serves every variant
it needs (functions-framework as deployed; the seed's Next.js app under `next start`),
drives keep-alive load (wrk when installed, else a bounded Python client) with the
variants taking turns within each round, and writes BENCHMARKS.md and bench/chart.png.
A variant whose server does not come up ends the run with a non-zero exit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import cache as cache_bench
from bench import load as loads
from bench import measure, plan, report, servers, statements
from devtools import seed
from devtools.devdb import EmbeddedPostgres


def _skipped(args: argparse.Namespace) -> dict[str, str]:
    """Variants that cannot or should not run here, and why."""
    why = "--no-node given" if args.no_node else servers.node_missing()
    if why is None:
        return {}
    return {v.name: why for v in plan.VARIANTS.values() if plan.SERVERS[v.server].node}


def _chosen(
    variants: tuple[str, ...], skipped: dict[str, str], args: argparse.Namespace
) -> tuple[str, ...]:
    """A cell's variants that run: not skipped, and among --variants when given."""
    return tuple(
        v for v in variants if v not in skipped and (not args.variants or v in args.variants)
    )


def _names(text: str) -> frozenset[str]:
    """A comma-separated list of --variants, --cells or --cases."""
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def run(args: argparse.Namespace) -> int:
    if args.only_cache:
        return cache_bench.main(_cache_args(args))
    use_wrk = loads.wrk_installed() and not args.python_client
    load: loads.Load = loads.load_wrk if use_wrk else loads.load_python
    if not use_wrk and not args.python_client:
        print(
            "bench: wrk not found, using the Python client (apt-get install -y wrk for the "
            "figures of BENCHMARKS.md)",
            flush=True,
        )
    skipped = _skipped(args)
    for name, why in skipped.items():
        print(f"bench: {name} not run: {why}", flush=True)
    cells = [
        cell
        for (users, conns), variants in plan.CELLS.items()
        if users <= args.max_users and (not args.cells or f"{users}x{conns}" in args.cells)
        if (cell := report.Cell(users, conns, _chosen(variants, skipped, args))).variants
    ]
    apps = {plan.SERVERS[plan.VARIANTS[v].server].app for c in cells for v in c.variants}
    servers.prepare_next(sorted(servers.ROOT / app for app in apps if app))
    started = time.monotonic()
    result = report.Run(
        cells,
        {},
        {},
        measure.import_costs(args.import_runs),
        "wrk" if use_wrk else "Python client",
        args.rounds,
        args.seconds,
        skipped,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench"))
    postgres = EmbeddedPostgres(workdir / "data").start()
    try:
        admin = seed.connect(postgres.url())
        seed.create_schema(admin)
        sizes = sorted({c.users for c in cells})
        for users in sizes:
            seed.seed_users(admin, users)
            seed.create_reader(admin, "bench")
            if not args.no_statements and users == max(s for s in sizes if s <= 100_000):
                result.statements_after = users * 9 // 10
                result.statements = statements.compare(
                    postgres, result.statements_after, min(2, args.rounds)
                )
            _measure_size(result, users, postgres, workdir, load, args)
        admin.close()
    finally:
        postgres.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)  # a million users: ~150 MB of data
    result.extras["total_s"] = time.monotonic() - started
    text = report.render(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "BENCHMARKS.md").write_text(text)
    if not args.no_chart:
        (out / "bench").mkdir(exist_ok=True)
        report.chart(result, out / "bench" / "chart.png")
    print(text)
    return 0 if args.no_cache_bench else cache_bench.main(_cache_args(args))


def _cache_args(args: argparse.Namespace) -> list[str]:
    """bench/cache.py's arguments from ours: its section goes into the same BENCHMARKS.md."""
    extra = ["--no-node"] if args.no_node else []
    extra += ["--python-client"] if args.python_client else []
    extra += ["--cases", ",".join(sorted(args.cases))] if args.cases else []
    out = str(Path(args.out) / "BENCHMARKS.md")
    return ["--rounds", str(args.rounds), "--seconds", str(args.seconds), "--out", out, *extra]


def _measure_size(
    result: report.Run,
    users: int,
    postgres: EmbeddedPostgres,
    workdir: Path,
    load: loads.Load,
    args: argparse.Namespace,
) -> None:
    """Every cell of one table size: its servers up, then interleaved rounds."""
    cells = [c for c in result.cells if c.users == users]
    names = {plan.VARIANTS[v].server for c in cells for v in c.variants}
    url = postgres.url(user=seed.READER_ROLE, password="bench")
    running: dict[str, servers.Running] = {}
    try:
        for name in sorted(names):
            running[name] = servers.Running(plan.SERVERS[name], url, workdir)
        if users == min(c.users for c in result.cells) and "users" in running:
            result.extras["first_request_extra_ms"] = measure.first_request_ms(running["users"].url)
        for v in dict.fromkeys(v for c in cells for v in c.variants):
            headers = loads.GZIP if plan.VARIANTS[v].gzip else {}
            server = running[plan.VARIANTS[v].server]
            body = loads.response_body(server.url, headers)
            if body.status != 200:  # up, but broken: its figures would measure error pages
                raise servers.ServerFailed(
                    f"variant '{v}' answered {body.status}: {body.start.decode(errors='replace')}"
                )
            result.bodies[(users, v)] = body
        seconds = args.seconds * (2 if users >= 100_000 else 1)
        for round_no in range(args.rounds):
            result.render_ms.setdefault(users, []).append(
                measure.render_ms(postgres, 3 if users < 1_000_000 else 1)
            )
            for cell in cells:
                for v in cell.variants:
                    variant = plan.VARIANTS[v]
                    server = running[variant.server]
                    with measure.Monitor(server, postgres.url(), postgres) as monitor:
                        r = load(
                            server.url,
                            cell.connections,
                            seconds,
                            loads.GZIP if variant.gzip else {},
                        )
                    r.peak_db_connections, r.peak_rss_mb = (
                        monitor.peak_connections,
                        monitor.peak_rss,
                    )
                    r.rss_growth_mb = max(0.0, monitor.peak_rss - monitor.start_rss)
                    r.pg_cpu_ms = monitor.cpu_s * 1000
                    cell.results.setdefault(v, []).append(r)
                    print(
                        f"round {round_no + 1} {users:>9,} users x{cell.connections:<2} {v:15s} "
                        f"{r.rps:9.1f} req/s p50 {r.p50_ms:8.1f} ms errors {r.errors} "
                        f"conns {r.peak_db_connections} rss {r.peak_rss_mb:5.0f} MB "
                        f"pg cpu {r.pg_cpu_ms / max(r.requests, 1):.3f} ms/req",
                        flush=True,
                    )
    finally:
        for s in running.values():
            s.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell and round")
    parser.add_argument("--max-users", type=int, default=1_000_000)
    parser.add_argument("--python-client", action="store_true", help="ignore wrk")
    parser.add_argument("--no-node", action="store_true", help="leave out the seed's route")
    parser.add_argument(
        "--out", default=str(servers.ROOT), help="where BENCHMARKS.md and bench/chart.png go"
    )
    parser.add_argument("--import-runs", type=int, default=9)
    parser.add_argument("--no-chart", action="store_true", help="skip the chart (no matplotlib)")
    parser.add_argument("--no-cache-bench", action="store_true", help="leave out bench/cache.py")
    parser.add_argument(
        "--only-cache", action="store_true", help="only bench/cache.py's section of BENCHMARKS.md"
    )
    parser.add_argument(
        "--variants", type=_names, default=frozenset(), help="only these (comma-separated)"
    )
    parser.add_argument(
        "--cells", type=_names, default=frozenset(), help="only these, as 10x8,1000x8"
    )
    parser.add_argument(
        "--cases", type=_names, default=frozenset(), help="only these of bench/cache.py"
    )
    parser.add_argument(
        "--no-statements", action="store_true", help="leave out the page statement's section"
    )
    try:
        return run(parser.parse_args(argv))
    except servers.ServerFailed as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
