"""Measurement around a load: the server's RSS, its database connections, PostgreSQL's CPU;
and the one-off figures (PostgreSQL's own JSON rendering time, imports, first request)."""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from bench.servers import ROOT, Running
from bench.statements import pgbench_ms
from devtools import seed
from devtools.devdb import EmbeddedPostgres


class PostgresCpu:
    """CPU seconds spent by a PostgreSQL cluster's processes since they started.

    Live processes are read from /proc/<pid>/schedstat (nanoseconds; the tick-sampled
    utime + stime miss most of a backend's sub-millisecond statements); backends that
    exited (a new connection per request) are in the postmaster's reaped-children times.
    `exclude` (pids) leaves out our own sampling backend.
    """

    def __init__(self, server: EmbeddedPostgres, exclude: set[int]) -> None:
        pid = int((server.datadir / "postmaster.pid").read_text().split()[0])
        self.postmaster, self.exclude = psutil.Process(pid), exclude

    def seconds(self) -> float:
        t = self.postmaster.cpu_times()
        total = t.children_user + t.children_system + _ran_s(self.postmaster)
        for child in self.postmaster.children():
            if child.pid not in self.exclude:
                total += _ran_s(child)
        return total


def _ran_s(process: psutil.Process) -> float:
    """CPU time of a live process; 0 if it exited meanwhile (its parent has it then)."""
    try:
        return int(Path(f"/proc/{process.pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError):
        try:
            t = process.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0


class Monitor:
    """While a load runs: peak RSS of the server, peak connections it holds, PostgreSQL CPU."""

    def __init__(
        self,
        running: Running,
        admin_url: str,
        postgres: EmbeddedPostgres,
        exclude: frozenset[int] = frozenset(),  # other backends not to count (a writer's)
    ) -> None:
        self.running = running
        self.peak_connections, self.peak_rss = 0, 0.0
        self.start_rss = running.rss_mb()
        self._conn = seed.connect(admin_url)
        self._cursor = self._conn.cursor()
        self._cursor.execute("SELECT pg_backend_pid()")
        self._cpu = PostgresCpu(postgres, exclude={self._cursor.fetchone()[0], *exclude})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_s = 0.0

    def __enter__(self) -> Monitor:
        self._cpu_start = self._cpu.seconds()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        time.sleep(0.05)  # let the postmaster reap backends that just exited
        self.cpu_s = self._cpu.seconds() - self._cpu_start
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (self.running.app_name,),
            )
            self.peak_connections = max(self.peak_connections, self._cursor.fetchone()[0])
            self.peak_rss = max(self.peak_rss, self.running.rss_mb())
            self._stop.wait(0.02)


def render_ms(postgres: EmbeddedPostgres, runs: int) -> float:
    """PostgreSQL's own time to render every user as one JSON text (pgbench, its C client)."""
    return pgbench_ms(postgres, "SELECT json_agg(u ORDER BY id)::text FROM users u", runs)


def first_request_ms(url: str) -> float:
    """A fresh server's first request (engine build, connect, column check) over a warm one."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
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
