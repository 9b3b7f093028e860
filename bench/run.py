"""`make bench`: the users function against its baselines, interleaved, in one run.

Starts an embedded PostgreSQL, seeds 10 / 1,000 / 100,000 / 1,000,000 users, serves each
variant with functions-framework exactly as `functions-framework --target users` does
(default gunicorn settings), drives keep-alive load at 1, 8 and 64 connections (wrk when
installed, else a bounded Python client), and writes BENCHMARKS.md and bench/chart.png.

Variants: `users` (this function), `users_nullpool` (a new connection per request),
`users_rows` (rows -> dicts -> JSON) and `floor` (a constant answer: the framework alone).
Every figure is the median of `--rounds` rounds; within a round the variants take turns.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devtools import seed
from devtools.devdb import EmbeddedPostgres, free_port, functions_framework

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> (source, target)
    "users": ("main.py", "users"),
    "users_nullpool": ("bench/variants.py", "users_nullpool"),
    "users_rows": ("bench/variants.py", "users_rows"),
    "floor": ("bench/variants.py", "floor"),
}
# (users, connections) -> variants left out, and why (said in BENCHMARKS.md).
SKIPPED = {
    (100_000, 64): {"users_rows": "64 x 100k rows as Python dicts: >1 GB and minutes per round"},
    (1_000_000, 1): {"users_rows": "one request takes ~20 s and >1 GB of Python dicts"},
}
PLAN = {10: (1, 8, 64), 1_000: (1, 8, 64), 100_000: (1, 8, 64), 1_000_000: (1,)}


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    peak_db_connections: int = 0
    peak_rss_mb: float = 0.0
    rss_growth_mb: float = 0.0


@dataclass
class Cell:
    users: int
    connections: int
    results: dict[str, list[Result]] = field(default_factory=dict)

    def median(self, variant: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.results[variant])


class Server:
    """One variant under `functions-framework`, with its worker's RSS sampled."""

    def __init__(self, variant: str, database_url: str) -> None:
        source, target = VARIANTS[variant]
        self.variant, self.port = variant, free_port()
        self.app_name = f"bench-{variant}"
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DB_APPLICATION_NAME": self.app_name,
            "PYTHONPATH": str(ROOT),
        }
        for key in ("WORKERS", "THREADS"):  # functions-framework's defaults, as deployed
            env.pop(key, None)
        self.process = subprocess.Popen(
            [
                functions_framework(),
                "--source",
                source,
                "--target",
                target,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=1).connect()
                break
            except OSError:
                time.sleep(0.05)

    def rss_mb(self) -> float:
        """RSS of the serving processes (gunicorn master and its worker)."""
        try:
            procs = [psutil.Process(self.process.pid)]
            procs += procs[0].children(recursive=True)
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Monitor:
    """Samples the server's RSS and its backends in pg_stat_activity while a load runs."""

    def __init__(self, server: Server, admin_url: str) -> None:
        self.server, self.admin_url = server, admin_url
        self.peak_connections, self.peak_rss, self.start_rss = 0, 0.0, server.rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        conn = seed.connect(self.admin_url)
        cursor = conn.cursor()
        while not self._stop.is_set():
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (self.server.app_name,),
            )
            self.peak_connections = max(self.peak_connections, cursor.fetchone()[0])
            self.peak_rss = max(self.peak_rss, self.server.rss_mb())
            self._stop.wait(0.01)
        conn.close()


def load_wrk(url: str, connections: int, seconds: float) -> Result:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "60s",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\b", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return Result(rps=rps, p50_ms=ms("50%"), p99_ms=ms("99%"), requests=requests, errors=errors)


def load_python(url: str, connections: int, seconds: float) -> Result:
    """A bounded keep-alive client: `connections` threads, each looping until the deadline."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        for _ in range(1_000_000):  # bounded by count as well as by time
            if time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                while response.read(1 << 20):
                    pass
                ok = response.status == 200
            except OSError:
                conn.close()
                ok = False
            mine.append(time.perf_counter() - started)
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return Result(
        rps=len(latencies) / elapsed,
        p50_ms=pick(0.5),
        p99_ms=pick(0.99),
        requests=len(latencies),
        errors=errors[0],
    )


def response_bytes(url: str) -> int:
    port = int(url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", "/")
    response = conn.getresponse()
    total = 0
    while chunk := response.read(1 << 20):
        total += len(chunk)
    conn.close()
    return total


def first_request_ms(url: str) -> float:
    """Latency of a fresh server's first request (engine build, connect, column check)."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", "/?limit=1")
    conn.getresponse().read()
    elapsed = (time.perf_counter() - started) * 1000
    warm = []
    for _ in range(20):
        started = time.perf_counter()
        conn.request("GET", "/?limit=1")
        conn.getresponse().read()
        warm.append((time.perf_counter() - started) * 1000)
    conn.close()
    return elapsed - statistics.median(warm)


def import_costs(runs: int) -> dict[str, float]:
    """Time of importing main vs its dependencies alone, measured inside a fresh interpreter
    (interpreter start and exit excluded), interleaved runs, medians (ms)."""
    statements = {
        "import_main_ms": "import main",
        "import_deps_ms": "import functions_framework, sqlalchemy, pg8000",
    }
    env = {**os.environ, "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db", "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {key: [] for key in statements}
    timed = "import time; t = time.perf_counter(); {}; print((time.perf_counter() - t) * 1000)"
    for _ in range(runs):
        for key, statement in statements.items():
            out = subprocess.run(
                [sys.executable, "-c", timed.format(statement)],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            times[key].append(float(out))
    return {key: statistics.median(values) for key, values in times.items()}


def run(args: argparse.Namespace) -> int:
    load = load_wrk if shutil.which("wrk") and not args.python_client else load_python
    client = "wrk" if load is load_wrk else "python client"
    plan = {size: conns for size, conns in PLAN.items() if size <= args.max_users}
    started = time.monotonic()
    cells: list[Cell] = []
    extras: dict[str, float] = {}
    extras.update(import_costs(args.import_runs))

    datadir = Path(tempfile.mkdtemp(prefix="pgbench")) / "data"
    server = EmbeddedPostgres(datadir).start()
    admin_url = server.url()
    sizes_bytes: dict[tuple[int, str], int] = {}
    try:
        conn = seed.connect(admin_url)
        seed.create_schema(conn)
        for size, connection_counts in plan.items():
            seed.seed_users(conn, size)
            seed.create_reader(conn, "bench")
            url = server.url(user=seed.READER_ROLE, password="bench")
            servers = {v: Server(v, url) for v in VARIANTS}
            try:
                if size == min(plan):
                    extras["first_request_extra_ms"] = first_request_ms(servers["users"].url)
                for v, s in servers.items():
                    if v != "users_rows" or size <= 100_000:
                        sizes_bytes[(size, v)] = response_bytes(s.url)
                size_cells = [Cell(size, c) for c in connection_counts]
                for round_no in range(args.rounds):
                    for cell in size_cells:
                        for v, s in servers.items():
                            if v in SKIPPED.get((size, cell.connections), {}):
                                continue
                            seconds = args.seconds * (2 if size >= 100_000 else 1)
                            with Monitor(s, admin_url) as monitor:
                                result = load(s.url, cell.connections, seconds)
                            result.peak_db_connections = monitor.peak_connections
                            result.peak_rss_mb = monitor.peak_rss
                            result.rss_growth_mb = max(0.0, monitor.peak_rss - monitor.start_rss)
                            cell.results.setdefault(v, []).append(result)
                            print(
                                f"[{time.monotonic() - started:6.0f}s] round {round_no + 1} "
                                f"{size:>9,} users x{cell.connections:<3} {v:15s} "
                                f"{result.rps:9.1f} req/s p99 {result.p99_ms:8.1f} ms "
                                f"errors {result.errors} conns {result.peak_db_connections}",
                                flush=True,
                            )
                cells.extend(size_cells)
            finally:
                for s in servers.values():
                    s.stop()
        conn.close()
    finally:
        server.stop("immediate")
    extras["total_s"] = time.monotonic() - started
    report = render(cells, sizes_bytes, extras, client, args)
    out = Path(args.out)
    (out / "BENCHMARKS.md").write_text(report)
    if not args.no_chart:
        (out / "bench").mkdir(exist_ok=True)
        chart(cells, out / "bench" / "chart.png")
    print(report)
    return 0


def ratio(cell: Cell, a: str, b: str) -> float | None:
    if a not in cell.results or b not in cell.results:
        return None
    return cell.median(a, "rps") / cell.median(b, "rps")


def render(
    cells: list[Cell], sizes: dict, extras: dict, client: str, args: argparse.Namespace
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` ({extras['total_s'] / 60:.1f} min). "
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, load from "
        f"{client}, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per cell "
        f"({2 * args.seconds:g} s from 100,000 users); medians. "
        "Each variant is served by `functions-framework` with its default gunicorn settings "
        f"(1 worker x {4 * (os.cpu_count() or 1)} threads), the function with `pool_size=5, "
        "max_overflow=0`, against an embedded PostgreSQL 18 on the same machine.",
        "",
        "- **users**: this function. **users_nullpool**: the same code with a new connection per "
        "request. **users_rows**: rows -> Python dicts -> JSON. **floor**: a constant JSON answer.",
        "",
        "![requests per second](bench/chart.png)",
        "",
        "| users | conns | variant | req/s | p50 ms | p99 ms | errors | peak DB conns "
        "| peak RSS MB | RSS growth MB | response bytes |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        for v in VARIANTS:
            if v not in cell.results:
                why = SKIPPED.get((cell.users, cell.connections), {}).get(v, "")
                lines.append(
                    f"| {cell.users:,} | {cell.connections} | {v} | not run: {why} |||||||"
                )
                continue
            rs = cell.results[v]
            lines.append(
                f"| {cell.users:,} | {cell.connections} | {v} | {cell.median(v, 'rps'):,.1f} | "
                f"{cell.median(v, 'p50_ms'):.2f} | {cell.median(v, 'p99_ms'):.2f} | "
                f"{sum(r.errors for r in rs)} | {max(r.peak_db_connections for r in rs)} | "
                f"{cell.median(v, 'peak_rss_mb'):.0f} | {max(r.rss_growth_mb for r in rs):.1f} | "
                f"{sizes.get((cell.users, v), 0):,} |"
            )
    lines += [
        "",
        "## Ratios and targets",
        "",
        "| measure | value | target | met |",
        "|---|---:|---:|---|",
    ]

    def row(
        label: str, value: float | None, target: float, higher: bool = True, unit: str = "x"
    ) -> None:
        if value is None:
            lines.append(f"| {label} | not measured | {target:g}{unit} | - |")
            return
        met = value >= target if higher else value <= target
        bound = f"{'>=' if higher else '<='} {target:g}{unit}"
        lines.append(f"| {label} | {value:.2f}{unit} | {bound} | {'yes' if met else 'NO'} |")

    by = {(c.users, c.connections): c for c in cells}
    if (10, 8) in by:
        row("10 users, 8 conns: users / floor", ratio(by[(10, 8)], "users", "floor"), 0.85)
        row(
            "10 users, 8 conns: users / users_nullpool",
            ratio(by[(10, 8)], "users", "users_nullpool"),
            3,
        )
    if (1_000, 8) in by:
        row(
            "1,000 users, 8 conns: users / users_rows",
            ratio(by[(1_000, 8)], "users", "users_rows"),
            10,
        )
    if (100_000, 1) in by:
        row(
            "100,000 users, 1 conn: users / users_rows",
            ratio(by[(100_000, 1)], "users", "users_rows"),
            10,
        )
    if (1_000_000, 1) in by:
        growth = max(r.rss_growth_mb for r in by[(1_000_000, 1)].results["users"])
        row("1,000,000 users: peak RSS growth of users", growth, 50, higher=False, unit=" MB")
    peak = max((max(r.peak_db_connections for r in c.results["users"]) for c in cells), default=0)
    row("peak DB connections of users, any cell", peak, 5, higher=False, unit="")
    lines += [
        "",
        "## Cold start",
        "",
        f"- `import main` (with `DATABASE_URL`): {extras['import_main_ms']:.0f} ms; "
        f"`import functions_framework, sqlalchemy, pg8000`: {extras['import_deps_ms']:.0f} ms "
        f"(timed inside fresh interpreters, medians of {args.import_runs} interleaved runs; "
        "`tests/test_server.py` checks that main loads no module beyond these and lib/).",
    ]
    if "first_request_extra_ms" in extras:
        lines.append(
            f"- First request's extra latency (build engine, connect, check columns, first "
            f"query) over a warm request: {extras['first_request_extra_ms']:.1f} ms."
        )
    return "\n".join(lines) + "\n"


def chart(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c.users:,}\nx{c.connections}" for c in cells]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.2
    for i, v in enumerate(VARIANTS):
        values = [c.median(v, "rps") if v in c.results else 0 for c in cells]
        ax.bar([x + (i - 1.5) * width for x in range(len(cells))], values, width, label=v)
    ax.set_xticks(range(len(cells)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log)")
    ax.set_xlabel("users in table x concurrent connections")
    ax.set_title("users function vs baselines (median of interleaved rounds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell and round")
    parser.add_argument("--max-users", type=int, default=1_000_000)
    parser.add_argument("--python-client", action="store_true", help="ignore wrk")
    parser.add_argument(
        "--out", default=str(ROOT), help="where BENCHMARKS.md and bench/chart.png go"
    )
    parser.add_argument("--import-runs", type=int, default=9)
    parser.add_argument("--no-chart", action="store_true", help="skip the chart (no matplotlib)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
