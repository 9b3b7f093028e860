"""Load generation: keep-alive GETs at a fixed connection count for a bounded time.

wrk when installed (`apt-get install -y wrk`), else a bounded Python client: threads, one
connection each, looping until the deadline (and at most a million requests).
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

GZIP = {"Accept-Encoding": "gzip"}


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
    pg_cpu_ms: float = 0.0  # PostgreSQL's CPU time over the whole load


Load = Callable[[str, int, float, dict[str, str]], Result]


def wrk_installed() -> bool:
    return shutil.which("wrk") is not None


def load_wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> Result:
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}"]
    command += [f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "60s"]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 120, check=True
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


def load_python(url: str, connections: int, seconds: float, headers: dict[str, str]) -> Result:
    """A bounded keep-alive client: `connections` threads, each looping until the deadline."""
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        mine: list[float] = []
        for _ in range(1_000_000):  # bounded by count as well as by time
            if time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            try:
                conn.request("GET", _target(url), headers=headers)
                response = conn.getresponse()
                while response.read(1 << 20):
                    pass
                ok = response.status in (200, 304)  # as wrk counts: 2xx and 3xx
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


def _target(url: str) -> str:
    """The request target of `url`: path and query."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class Body:
    bytes: int  # as sent on the wire (compressed when the server compressed)
    encoding: str  # Content-Encoding, "" when none
    status: int
    start: bytes  # the first bytes of the body, to say what a failing variant answered


def response_body(url: str, headers: dict[str, str]) -> Body:
    """One GET: the body's size on the wire, and its Content-Encoding."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    conn.request("GET", _target(url), headers=headers)
    response = conn.getresponse()
    total, start = 0, b""
    while chunk := response.read(1 << 20):
        total, start = total + len(chunk), start or chunk[:300]
    conn.close()
    return Body(total, response.getheader("Content-Encoding", ""), response.status, start)
