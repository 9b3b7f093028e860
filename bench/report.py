"""The report: BENCHMARKS.md (table, targets met or not, cold start) and bench/chart.png."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Body, Result
from bench.plan import LEFT_OUT, SEED, VARIANTS
from bench.statements import LIMITS, STATEMENTS, Figure


@dataclass
class Cell:
    users: int
    connections: int
    variants: tuple[str, ...]
    results: dict[str, list[Result]] = field(default_factory=dict)

    def median(self, variant: str, attr: str) -> float | None:
        if variant not in self.results:
            return None
        return statistics.median(getattr(r, attr) for r in self.results[variant])

    def cpu_ms_per_request(self, variant: str) -> float | None:
        if variant not in self.results:
            return None
        return statistics.median(r.pg_cpu_ms / max(r.requests, 1) for r in self.results[variant])

    def vs_seed(self, variant: str) -> float | None:
        seed = SEED + "_gzip" if VARIANTS[variant].gzip else SEED
        mine, theirs = self.median(variant, "rps"), self.median(seed, "rps")
        return mine / theirs if mine is not None and theirs else None


@dataclass
class Run:
    cells: list[Cell]
    bodies: dict[tuple[int, str], Body]
    render_ms: dict[int, list[float]]  # users -> PostgreSQL's json_agg time, per round
    extras: dict[str, float]
    client: str
    rounds: int
    seconds: float
    skipped: dict[str, str]  # variant -> why it did not run at all
    statements: dict[tuple[str, int], Figure] = field(default_factory=dict)
    statements_after: int = 0

    def cell(self, users: int, connections: int) -> Cell | None:
        return next(
            (c for c in self.cells if (c.users, c.connections) == (users, connections)), None
        )


@dataclass(frozen=True)
class Target:
    label: str
    value: float | None
    bound: float
    higher: bool = True
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.bound if self.higher else self.value <= self.bound

    def row(self) -> str:
        bound = f"{'>=' if self.higher else '<='} {self.bound:g}{self.unit}"
        if self.value is None:
            return f"| {self.label} | not measured | {bound} | - |"
        met = "met" if self.met else "NOT MET"
        return f"| {self.label} | {self.value:.2f}{self.unit} | {bound} | {met} |"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(run: Run) -> list[Target]:
    """Issue #11's targets (against the seed's route, same run), then the older ones."""
    out: list[Target] = []
    c10, c1k = run.cell(10, 8), run.cell(1_000, 8)
    c100k1, c100k8, c1m = run.cell(100_000, 1), run.cell(100_000, 8), run.cell(1_000_000, 1)
    if c1k:
        out.append(Target("1,000 users x 8 conns: users / seed req/s", c1k.vs_seed("users"), 4.0))
    if c100k1:
        out.append(
            Target("100,000 users x 1 conn: users / seed req/s", c100k1.vs_seed("users"), 2.5)
        )
        render = statistics.median(run.render_ms[100_000]) if run.render_ms.get(100_000) else None
        out.append(
            Target(
                "100,000 users x 1 conn: users p50 / PostgreSQL's own json_agg time",
                _ratio(c100k1.median("users", "p50_ms"), render),
                1.2,
                higher=False,
            )
        )
    if c10:
        out.append(Target("10 users x 8 conns: users / seed req/s", c10.vs_seed("users"), 0.6))
    if c100k8:
        out.append(
            Target(
                "100,000 users x 8 conns: peak RSS users / seed",
                _ratio(c100k8.median("users", "peak_rss_mb"), c100k8.median(SEED, "peak_rss_mb")),
                0.25,
                higher=False,
            )
        )
    if c1k:
        seed_cpu = c1k.cpu_ms_per_request(SEED)
        for v in c1k.variants:
            if v != SEED and not VARIANTS[v].gzip:
                out.append(
                    Target(
                        f"1,000 users: PostgreSQL CPU per request, {v} / seed",
                        _ratio(c1k.cpu_ms_per_request(v), seed_cpu),
                        3.0,
                        higher=False,
                    )
                )
    if c10:
        out.append(
            Target(
                "10 users x 8 conns: users / floor req/s",
                _ratio(c10.median("users", "rps"), c10.median("floor", "rps")),
                0.85,
            )
        )
        out.append(
            Target(
                "10 users x 8 conns: users / users_nullpool req/s",
                _ratio(c10.median("users", "rps"), c10.median("users_nullpool", "rps")),
                3,
            )
        )
    if c1k:
        out.append(
            Target(
                "1,000 users x 8 conns: users / users_rows req/s",
                _ratio(c1k.median("users", "rps"), c1k.median("users_rows", "rps")),
                10,
            )
        )
    if c1m:
        growth = max(r.rss_growth_mb for r in c1m.results["users"])
        out.append(
            Target(
                "1,000,000 users: peak RSS growth of users", growth, 50, higher=False, unit=" MB"
            )
        )
    peaks = [r.peak_db_connections for c in run.cells for r in c.results.get("users", [])]
    out.append(
        Target(
            "peak DB connections of users, any cell",
            max(peaks, default=None),
            5,
            higher=False,
            unit="",
        )
    )
    return out


def _gzip(run: Run, users: int, variant: str) -> str:
    if not VARIANTS[variant].gzip:
        return "-"
    body = run.bodies.get((users, variant))
    if body is None:
        return "?"
    return f"{body.encoding}" if body.encoding else "not compressed"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(run: Run) -> str:
    cpus = os.cpu_count() or 1
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` ({run.extras['total_s'] / 60:.1f} min). Machine: {cpus} CPUs "
        f"(shared with other jobs: figures are noisy, ratios within a run are what counts), "
        f"Python {platform.python_version()}, load from {run.client}, {run.rounds} interleaved "
        f"rounds of {run.seconds:g} s per cell ({2 * run.seconds:g} s from 100,000 users); "
        "medians. Python variants run under `functions-framework` with its default gunicorn "
        f"settings (1 worker x {4 * cpus} threads); the seed under `next start` (production "
        "build); all against one embedded PostgreSQL 18 on the same machine.",
        "",
    ]
    lines += [f"- **{v.name}**: {v.about}." for v in VARIANTS.values()]
    lines += [f"- **{name}** not run: {why}." for name, why in run.skipped.items()]
    lines += [
        "",
        "Columns: **x seed** is req/s over the seed's in the same cell (gzip variants over the "
        "seed's gzip variant); **PG CPU ms/req** is the CPU time of every PostgreSQL process "
        "(user + system, backends that exited included) over the load, divided by the requests; "
        "**bytes/req** is one response body as sent; **gzip** is the answer's Content-Encoding.",
        "",
        "![requests per second](bench/chart.png)",
        "",
        "| users | conns | variant | req/s | x seed | p50 ms | p99 ms | errors | peak DB conns "
        "| peak RSS MB | PG CPU ms/req | bytes/req | gzip |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell in run.cells:
        for v in cell.variants:
            if v not in cell.results:
                continue
            rs = cell.results[v]
            body = run.bodies.get((cell.users, v))
            lines.append(
                f"| {cell.users:,} | {cell.connections} | {v} | {cell.median(v, 'rps'):,.1f} | "
                f"{_num(cell.vs_seed(v), '.2f')} | {cell.median(v, 'p50_ms'):.2f} | "
                f"{cell.median(v, 'p99_ms'):.2f} | {sum(r.errors for r in rs)} | "
                f"{max(r.peak_db_connections for r in rs)} | {cell.median(v, 'peak_rss_mb'):.0f} | "
                f"{_num(cell.cpu_ms_per_request(v), '.3f')} | "
                f"{_num(body.bytes if body else None, ',')} | {_gzip(run, cell.users, v)} |"
            )
    lines += ["", "Left out to keep one run near 10 minutes:", ""]
    lines += [f"- {why}" for why in LEFT_OUT]
    lines += [
        "",
        "PostgreSQL's own time to render every user as one JSON text "
        "(`SELECT json_agg(u ORDER BY id)::text FROM users u` under pgbench, medians):",
        "",
    ]
    lines += [
        f"- {users:,} users: {statistics.median(ms):.2f} ms"
        for users, ms in sorted(run.render_ms.items())
    ]
    lines += _statements(run)
    lines += ["", "## Targets", "", "| measure | value | target | met |", "|---|---:|---:|---|"]
    lines += [t.row() for t in targets(run)]
    lines += [
        "",
        "## Cold start",
        "",
        f"- `import main` (with `DATABASE_URL`): {run.extras['import_main_ms']:.0f} ms; "
        f"`import functions_framework, sqlalchemy, pg8000`: {run.extras['import_deps_ms']:.0f} ms "
        "(timed inside fresh interpreters, medians of interleaved runs; "
        "`tests/test_server.py` checks that main loads no module beyond these and lib/).",
    ]
    if "first_request_extra_ms" in run.extras:
        lines.append(
            f"- First request's extra latency (build engine, connect, check columns, first "
            f"query) over a warm request: {run.extras['first_request_extra_ms']:.1f} ms."
        )
    lines += ["", *compression()]
    return "\n".join(lines) + "\n"


def compression() -> list[str]:
    """bench/compression.md (`python -m bench.compression`: gzip levels, whole and streamed)
    as a section: the level the function uses was chosen from it."""
    text = (Path(__file__).parent / "compression.md").read_text().strip().splitlines()
    return ["## Compression: " + text[0].removeprefix("# "), *text[1:]]


def _statements(run: Run) -> list[str]:
    if not run.statements:
        return []
    users = max(c.users for c in run.cells if c.users <= 100_000)
    head = " | ".join(f"{n:,} rows: ms / CPU ms" for n in LIMITS)
    lines = [
        "",
        "## The page statement",
        "",
        f"One page of `id, email, name, created_at` after id {run.statements_after:,} in a "
        f"table of {users:,} users: pgbench latency (one client) / CPU of the backend running "
        "it (from /proc, robust to a busy machine), best of the interleaved rounds.",
        "",
        f"| statement | {head} |",
        "|---|" + "---:|" * len(LIMITS),
    ]
    for name in STATEMENTS:
        cells = [run.statements[(name, n)] for n in LIMITS]
        values = " | ".join(f"{f.latency_ms:.3f} / {f.cpu_ms:.3f}" for f in cells)
        lines.append(f"| {name} | {values} |")
    return lines


def chart(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in VARIANTS if any(v in c.results for c in run.cells)]
    fig, ax = plt.subplots(figsize=(13, 5))
    width = 0.8 / max(len(names), 1)
    for i, v in enumerate(names):
        values = [c.median(v, "rps") or 0 for c in run.cells]
        xs = [x + (i - (len(names) - 1) / 2) * width for x in range(len(run.cells))]
        ax.bar(xs, values, width, label=v)
    ax.set_xticks(range(len(run.cells)), [f"{c.users:,}\nx{c.connections}" for c in run.cells])
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log)")
    ax.set_xlabel("users in table x concurrent connections")
    ax.set_title("users function vs the seed's route and baselines (median of interleaved rounds)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
