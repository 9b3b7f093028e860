"""gzip levels 1-9 on the function's own JSON: CPU per MB against bytes saved.

    python -m bench.compression [--url postgresql://...] > bench/compression.md

Without --url, starts an embedded PostgreSQL and seeds 100,000 users (devtools). The bodies
are the function's bytes: rows rendered by PostgreSQL's row_to_json, joined as
lib/listing/pages.py joins them. "whole" compresses a body in one call
(lib/listing/compression.compress); "spooled" compresses it from its spool, CHUNK bytes at a
time, as a listing larger than the spool's memory is sent (compress_file). CPU is this
thread's CPU time, the
best of --repeat runs. Prints a markdown table (and, when the packages are installed, what
brotli and zstandard would give, with their import cost).
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from devtools import seed
from devtools.devdb import EmbeddedPostgres
from lib.listing import compression
from lib.listing.pages import PAGE_ROWS

SIZES = (1_000, 100_000)
_PAGE = (
    "SELECT coalesce(string_agg(row_to_json(u)::text, ',' ORDER BY u.id), '') FROM "
    "(SELECT id, email, name, created_at FROM users WHERE id > {after} ORDER BY id "
    "LIMIT {limit}) u"
)


def pages(url: str, users: int) -> list[bytes]:
    """The body of a listing of `users` users, in the pages it is read in."""
    conn = seed.connect(url)
    cursor = conn.cursor()
    texts = []
    for after in range(0, users, PAGE_ROWS):
        cursor.execute(_PAGE.format(after=after, limit=min(PAGE_ROWS, users - after)))
        texts.append(("," if after else '{"users":[') + cursor.fetchone()[0])
    conn.close()
    texts[-1] += "]}"
    return [text.encode() for text in texts]


def cpu_seconds(work: Callable[..., bytes], args: tuple, repeat: int) -> tuple[float, int]:
    """The least CPU time `work(*args)` took in `repeat` runs, and its output's size."""
    best, size = float("inf"), 0
    for _ in range(repeat):
        started = time.thread_time()
        size = len(work(*args))
        best = min(best, time.thread_time() - started)
    return best, size


def spooled(body: bytes, level: int) -> bytes:
    out = io.BytesIO()
    compression.compress_file(io.BytesIO(body), out.write, level)
    return out.getvalue()


def import_ms(module: str) -> float | None:
    """A cold import in a fresh interpreter, or None when the module is not installed."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(done.stdout) * 1000 if done.returncode == 0 else None


def others(body: bytes, repeat: int) -> list[str]:
    """brotli and zstd at their fast settings, when installed (not runtime dependencies)."""
    rows = []
    for module, label, make in (
        ("brotli", "br quality 1", lambda m: lambda b: m.compress(b, quality=1)),
        ("brotli", "br quality 4", lambda m: lambda b: m.compress(b, quality=4)),
        ("zstandard", "zstd level 1", lambda m: m.ZstdCompressor(level=1).compress),
        ("zstandard", "zstd level 3", lambda m: m.ZstdCompressor(level=3).compress),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        compress = make(mod)
        cpu, size = cpu_seconds(compress, (body,), repeat)
        mb = len(body) / 1e6
        rows.append(
            f"| {label} | {size:,} | {len(body) / size:.1f}x | {cpu * 1000:.1f} | "
            f"{cpu * 1000 / mb:.1f} | {import_ms(module):.1f} |"
        )
    return rows


def table(url: str, repeat: int) -> str:
    lines = [
        "| users | mode | level | bytes | ratio | CPU ms | CPU ms per MB | saved MB per CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    biggest = b""
    for users in SIZES:
        parts = pages(url, users)
        body = b"".join(parts)
        biggest = body
        for mode in ("whole", "spooled"):
            for level in range(1, 10):
                if mode == "whole":
                    cpu, size = cpu_seconds(compression.compress, (body, level), repeat)
                else:
                    cpu, size = cpu_seconds(spooled, (body, level), repeat)
                mb = len(body) / 1e6
                saved = (len(body) - size) / 1e6
                lines.append(
                    f"| {users:,} | {mode} | {level} | {size:,} | {len(body) / size:.1f}x | "
                    f"{cpu * 1000:.1f} | {cpu * 1000 / mb:.1f} | {saved / max(cpu, 1e-9):,.0f} |"
                )
        lines.append(f"| {users:,} | identity | - | {len(body):,} | 1.0x | 0 | 0 | - |")
    extra = others(biggest, repeat)
    if extra:
        lines += [
            "",
            f"Other codings on the {SIZES[-1]:,}-user body (whole), for comparison:",
            "",
            "| coding | bytes | ratio | CPU ms | CPU ms per MB | cold import ms |",
            "|---|---:|---:|---:|---:|---:|",
            *extra,
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a database whose users table holds >= 100,000 users")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best is kept)")
    args = parser.parse_args(argv)
    if args.url:
        print(table(args.url, args.repeat))
        return 0
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="bench-gzip")) / "data").start()
    try:
        conn = seed.connect(server.url())
        seed.create_schema(conn)
        seed.seed_users(conn, SIZES[-1], progress=False)
        conn.close()
        print(table(server.url(), args.repeat))
    finally:
        server.stop("immediate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
