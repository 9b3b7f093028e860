"""Time to first byte and to last byte, throughput and peak RSS of a full listing, the
function beside the seed's route, in one run (issue 25: rendering the whole listing before
its first byte moves latency to the front).

    python -m bench.latency [--users 100000,1000000] [--before PATH]

Starts an embedded PostgreSQL, seeds each size, serves the function (as deployed) and the
seed's Next.js route, and has 1 and then 8 keep-alive clients read `GET /` whole, each a
bounded number of times. `--before PATH` also serves the function from another checkout
(a `git worktree` of an earlier commit), for a before/after in the same run. Prints a
markdown table: p50 and p99 of the first and last byte in ms, requests/s, and the peak RSS
of each server's process tree, sampled every 50 ms; then each figure as a ratio of the seed's.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from bench import plan, servers
from devtools import seed
from devtools.devdb import EmbeddedPostgres

ROUNDS = {100_000: (6, 2), 1_000_000: (2, 1)}  # requests per client at c=1, at c=8
MAX_S = 120  # every load ends by then, whatever it has done


def read_once(conn: http.client.HTTPConnection, path: str) -> tuple[float, float, int]:
    """(first byte, last byte) in seconds, and the status, of one GET."""
    started = time.perf_counter()
    conn.request("GET", path, headers={"Accept-Encoding": "identity"})
    response = conn.getresponse()
    response.read(1)
    first_at = time.perf_counter() - started
    response.read()
    return first_at, time.perf_counter() - started, response.status


def load(server: servers.Running, clients: int, each: int) -> dict[str, float]:
    """`clients` connections, each reading the listing `each` times; RSS sampled meanwhile."""
    timings: list[tuple[float, float]] = []
    refused: list[int] = []  # statuses other than 200 (a full pool answers 503 at once)
    peak, done = [server.rss_mb()], threading.Event()
    deadline = time.monotonic() + MAX_S

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(server.rss_mb())

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=MAX_S)
        for _ in range(each):
            if time.monotonic() > deadline:
                break
            first, last, status = read_once(conn, server.server.path)
            if status == 200:
                timings.append((first, last))
            else:
                refused.append(status)
        conn.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(MAX_S + 10)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    firsts = sorted(t[0] for t in timings)
    lasts = sorted(t[1] for t in timings)

    def p99(values: list[float]) -> float:
        return values[min(len(values) - 1, int(len(values) * 0.99))]

    return {
        "first_p50": statistics.median(firsts) * 1000,
        "first_p99": p99(firsts) * 1000,
        "last_p50": statistics.median(lasts) * 1000,
        "last_p99": p99(lasts) * 1000,
        "rps": len(timings) / elapsed,
        "rss_mb": max(peak),
        "refused": len(refused),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="100000,1000000")
    parser.add_argument("--before", type=Path, help="another checkout's function, served too")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.users.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-latency"))
    if servers.node_missing() is None:
        servers.prepare_next([Path(plan.SERVERS["seed_next"].app)])
    database = EmbeddedPostgres(work / "data").start()
    lines = [
        "| users | c | server | first p50 | first p99 | last p50 | last p99 | req/s | RSS MB "
        "| not 200 |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: list[str] = []
    try:
        url = database.url()
        for users in sizes:
            conn = seed.connect(url)
            seed.create_schema(conn)
            conn.cursor().execute("TRUNCATE users RESTART IDENTITY")
            seed.seed_users(conn, users, progress=False)
            conn.close()
            wanted = {"users": (plan.SERVERS["users"], {})}
            if servers.node_missing() is None:
                wanted["seed"] = (plan.SERVERS["seed_next"], {})
            if args.before:
                before = replace(plan.SERVERS["users"], source=str(args.before / "main.py"))
                wanted["before"] = (before, {"PYTHONPATH": str(args.before)})
            running = {
                name: servers.Running(server, url, work, env, name=name)
                for name, (server, env) in wanted.items()
            }
            try:
                for server in running.values():  # warm: the engine, the JIT, a first render
                    warm = http.client.HTTPConnection("127.0.0.1", server.port, timeout=MAX_S)
                    read_once(warm, server.server.path)
                    warm.close()
                for clients, each in zip((1, 8), ROUNDS[users], strict=True):
                    figures = {
                        name: load(server, clients, each) for name, server in running.items()
                    }
                    for name, f in figures.items():
                        lines.append(
                            f"| {users:,} | {clients} | {name} | {f['first_p50']:.0f} | "
                            f"{f['first_p99']:.0f} | {f['last_p50']:.0f} | {f['last_p99']:.0f} | "
                            f"{f['rps']:.2f} | {f['rss_mb']:.0f} | {f['refused']} |"
                        )
                    if "seed" in figures:
                        s = figures["seed"]
                        for name in (n for n in figures if n != "seed"):
                            f = figures[name]
                            ratios.append(
                                f"| {users:,} | {clients} | {name} | {f['rps'] / s['rps']:.2f}x | "
                                f"{f['rss_mb'] / s['rss_mb']:.2f}x | "
                                f"{f['first_p50'] / s['first_p50']:.2f}x | "
                                f"{f['last_p50'] / s['last_p50']:.2f}x |"
                            )
            finally:
                for server in running.values():
                    server.stop()
    finally:
        database.stop("immediate")
    print("\n".join(lines))
    if ratios:
        print(
            "\n| users | c | server | req/s / seed | peak RSS / seed | first p50 / seed | "
            "last p50 / seed |\n|---:|---:|---|---:|---:|---:|---:|"
        )
        print("\n".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
