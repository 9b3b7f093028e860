"""The response cache's figures (docs/cache.md), side by side with the seed in one run.

At 1,000 users: PostgreSQL CPU per request with an idle table, with another table written
every few ms (every request misses), for a 304 revalidation and with the opt-in trigger
validator; requests/s at 8 connections with and without the cache; what the trigger costs
a writer; the function's RSS with its cache full. Writes the section "The response cache"
of BENCHMARKS.md. Run alone with `python -m bench.cache`, or by `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import load as loads
from bench import measure, plan, servers
from bench.statements import pgbench_ms
from devtools import seed
from devtools.devdb import EmbeddedPostgres
from lib.listing import validator

USERS = 1_000
MAX_WRITES = 100_000  # per writer and case: every write loop is bounded in count as in time
UPDATED_USER = USERS // 2  # the one user `one_user` keeps updating
MIGRATION = servers.ROOT / "sql" / "cache_version.sql"
SECTION = "## The response cache"
INSERT = "INSERT INTO users (email, name, created_at) VALUES (md5(random()::text), 'w', now())"


@dataclass(frozen=True)
class Writes:
    """What the cluster is written meanwhile: another table every `elsewhere_s` (no user
    changed), and one user updated `user_per_s` times a second."""

    name: str
    elsewhere_s: float | None = None
    user_per_s: float = 0.0

    def about(self) -> str:
        parts = [f"another table every {self.elsewhere_s * 1000:g} ms"] if self.elsewhere_s else []
        parts += [f"one user {self.user_per_s:g} times a second"] if self.user_per_s else []
        return ", ".join(parts) or "nothing"


IDLE = Writes("idle")
BUSY = Writes("busy", 0.001)  # issue #18's busy cluster: a write elsewhere ~every request
ELSEWHERE = Writes("elsewhere", 0.003)  # issue #26: written every few ms, no user changed
ONE_USER = Writes("one_user", 0.003, 20.0)  # issue #26: and one user ~20 times a second


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    server: str  # a key of `servers_env`
    connections: int
    writes: Writes = IDLE
    revalidate: bool = False  # If-None-Match with the current ETag


CASES = (
    Case("seed_next", "the seed's route", "seed_next", 4),
    Case("no_cache", "this function, RESPONSE_CACHE=off (as before the cache)", "no_cache", 4),
    Case("cache_idle", "this function, cache on, the table unchanged", "cache", 4),
    Case("cache_304", "cache on, If-None-Match with the current ETag", "cache", 4, revalidate=True),
    Case("seed_next_busy", "the seed's route, writes elsewhere", "seed_next", 4, BUSY),
    Case("no_cache_busy", "cache off, writes elsewhere", "no_cache", 4, BUSY),
    Case("cache_busy", "cache on, writes elsewhere: most requests miss", "cache", 4, BUSY),
    Case(
        "trigger_busy", "cache on, opt-in trigger validator, writes elsewhere", "trigger", 4, BUSY
    ),
    Case(
        "seed_next_elsewhere", "the seed's route, another table written", "seed_next", 4, ELSEWHERE
    ),
    Case(
        "cache_elsewhere", "cache on, another table written, no user changed", "cache", 4, ELSEWHERE
    ),
    Case("seed_next_one_user", "the seed's route, and one user updated", "seed_next", 4, ONE_USER),
    Case("cache_one_user", "cache on, and one user updated", "cache", 4, ONE_USER),
    Case("trigger_one_user", "trigger validator, and one user updated", "trigger", 4, ONE_USER),
    Case("seed_next_c8", "the seed's route", "seed_next", 8),
    Case("no_cache_c8", "cache off", "no_cache", 8),
    Case("cache_c8", "cache on, the table unchanged", "cache", 8),
)


@dataclass
class Figures:
    rps: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # PostgreSQL CPU per request
    errors: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # the cache's, from the log lines

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def writer(url: str, writes: Writes) -> Iterator[set[int]]:
    """Write as `writes` says while inside; yields the writers' backend pids (their own CPU
    is not the function's cost). Each loop stops at the end of the block or after
    MAX_WRITES, whichever comes first."""
    loops: list[tuple[float, str]] = []
    if writes.elsewhere_s:
        loops.append((writes.elsewhere_s, "INSERT INTO elsewhere VALUES (1)"))
    if writes.user_per_s:  # a new name each time: the served rows really change
        update = (
            f"UPDATE users SET name = 'updated ' || clock_timestamp() WHERE id = {UPDATED_USER}"
        )
        loops.append((1 / writes.user_per_s, update))
    conns = [seed.connect(url) for _ in loops]
    stop = threading.Event()
    pids: set[int] = set()
    threads = []
    for conn, (every_s, statement) in zip(conns, loops, strict=True):
        cursor = conn.cursor()
        cursor.execute("CREATE TABLE IF NOT EXISTS elsewhere (n int)")
        cursor.execute("SELECT pg_backend_pid()")
        pids.add(cursor.fetchone()[0])

        def run(cursor=cursor, every_s=every_s, statement=statement) -> None:
            for _ in range(MAX_WRITES):
                if stop.wait(every_s):
                    break
                cursor.execute(statement)

        threads.append(threading.Thread(target=run, daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield pids
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for conn in conns:
            if writes.elsewhere_s:
                conn.cursor().execute("TRUNCATE elsewhere")
            conn.close()


def outcomes(log: Path, offset: int) -> Counter[str]:
    """What the cache did for each request logged past `offset`: hit, miss, skip, off."""
    with log.open("rb") as file:
        file.seek(offset)
        return Counter(re.findall(r'"cache":"(\w+)"', file.read().decode(errors="replace")))


def etag(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback
        return response.headers["ETag"]


def health(url: str) -> dict:
    base = url.rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{base}/healthz", timeout=30) as response:  # noqa: S310
        return json.loads(response.read())["cache"]


def fill(url: str, max_requests: int = 3000, until_full: bool = True) -> tuple[dict, int]:
    """Distinct pages, raw and gzip, until the cache holds ~its bound (or `max_requests`);
    its /healthz and the requests sent."""
    n = 0
    for n in range(max_requests):
        gz = loads.GZIP if n % 2 else {}
        page = f"{url}?limit={1 + n % 1000}"
        request = urllib.request.Request(page, headers=gz)  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            response.read()
        if (
            until_full
            and n % 50 == 0
            and (state := health(url))["bytes"] >= 0.9 * state["max_bytes"]
        ):
            return state, n + 1
    return health(url), n + 1


def run(
    rounds: int,
    seconds: float,
    load: loads.Load,
    no_node: bool,
    transactions: int,
    only: frozenset[str] = frozenset(),  # the cases to run; all when empty
) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="bench-cache"))
    postgres = EmbeddedPostgres(workdir / "data").start()
    running: dict[str, servers.Running] = {}
    figures = {case.name: Figures() for case in CASES}
    cases = [
        c
        for c in CASES
        if not (no_node and c.server == "seed_next") and (not only or c.name in only)
    ]
    extra: dict[str, float] = {}
    try:
        admin = seed.connect(postgres.url())
        seed.create_schema(admin)
        seed.seed_users(admin, USERS, progress=False)
        seed.create_reader(admin, "bench")
        url = postgres.url(user=seed.READER_ROLE, password="bench")
        users = plan.SERVERS["users"]
        if not no_node:
            running["seed_next"] = servers.Running(plan.SERVERS["seed_next"], url, workdir)
        running["no_cache"] = servers.Running(
            users, url, workdir, {"RESPONSE_CACHE": "off"}, "no_cache"
        )
        running["cache"] = servers.Running(users, url, workdir, {}, "cache")
        for name in running:  # first requests: snapshot validators found before the trigger
            loads.response_body(running[name].url, {})
        admin.cursor().execute(MIGRATION.read_text())
        running["trigger"] = servers.Running(users, url, workdir, {}, "trigger")
        loads.response_body(running["trigger"].url, {})
        if health(running["trigger"].url)["validators"] != {"users": "trigger"}:
            raise servers.ServerFailed("the trigger validator was not found")
        for round_no in range(rounds):
            for case in cases:
                server = running[case.server]
                headers = {"If-None-Match": etag(server.url)} if case.revalidate else {}
                with contextlib.ExitStack() as stack:
                    exclude = stack.enter_context(writer(postgres.url(), case.writes))
                    monitor = stack.enter_context(
                        measure.Monitor(server, postgres.url(), postgres, frozenset(exclude))
                    )
                    logged = server.log.stat().st_size
                    r = load(server.url, case.connections, seconds, headers)
                f = figures[case.name]
                f.outcomes.update(outcomes(server.log, logged))
                f.rps.append(r.rps)
                f.cpu_ms.append(monitor.cpu_s * 1000 / max(r.requests, 1))
                f.errors += r.errors
                print(
                    f"cache round {round_no + 1} {case.name:15s} {r.rps:8.1f} req/s "
                    f"pg cpu {f.cpu_ms[-1]:.3f} ms/req errors {r.errors}",
                    flush=True,
                )
        if not only:  # the one-off figures belong to a whole run
            state = health(running["cache"].url)
            extra["hit_rate_idle"] = state["recent_hit_rate"] or 0.0
            for server in running.values():
                server.stop()
            running.clear()
            fresh = servers.Running(users, url, workdir, {}, "cache_full")
            running["cache_full"] = fresh
            loads.response_body(fresh.url, {})
            extra["rss_start_mb"] = fresh.rss_mb()
            full, sent = fill(fresh.url)
            extra["rss_full_mb"] = fresh.rss_mb()
            extra["cache_bytes_mb"] = full["bytes"] / 2**20
            extra["cache_entries"] = full["entries"]
            off = servers.Running(users, url, workdir, {"RESPONSE_CACHE": "off"}, "cache_off_fill")
            running["cache_off_fill"] = off
            loads.response_body(off.url, {})
            extra["rss_off_start_mb"] = off.rss_mb()
            fill(off.url, sent, until_full=False)
            extra["rss_off_mb"] = off.rss_mb()
            for name, with_id in (("probe_ms", False), ("probe_pooler_ms", True)):
                extra[name] = pgbench_ms(
                    postgres, validator.probe_sql(validator.SNAPSHOT, with_id), 5000
                )
            extra["select_1_ms"] = pgbench_ms(postgres, "SELECT 1", transactions)
            with_trigger, without = [], []
            for _ in range(3):  # interleaved: the table grows as the rounds insert
                with_trigger.append(pgbench_ms(postgres, INSERT, transactions))
                admin.cursor().execute("DROP FUNCTION users_version_bump() CASCADE")
                without.append(pgbench_ms(postgres, INSERT, transactions))
                admin.cursor().execute(MIGRATION.read_text())
            extra["insert_trigger_ms"] = statistics.median(with_trigger)
            extra["insert_plain_ms"] = statistics.median(without)
        admin.close()
    finally:
        for server in running.values():
            server.stop()
        postgres.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)
    return render(figures, extra, cases, rounds, seconds)


def render(
    figures: dict[str, Figures], extra: dict[str, float], cases: list[Case], rounds: int, s: float
) -> str:
    def cpu(name: str) -> float:
        return figures[name].median(figures[name].cpu_ms)

    def rps(name: str) -> float:
        return figures[name].median(figures[name].rps)

    def ratio(a: str, b: str, of=cpu) -> str:
        if b not in figures or not figures[b].cpu_ms:
            return "-"
        return f"{of(a) / of(b):.2f}x"

    lines = [
        SECTION,
        "",
        f"Written by `python -m bench.cache` (also run by `make bench`): {USERS:,} users, "
        f"{rounds} interleaved rounds of {s:g} s per case, medians. PG CPU ms/req as above "
        "(the writers' own backends left out); **x seed** is over the seed's route in the same "
        "conditions (the same writes and connections). Writes meanwhile: "
        + "; ".join(f"{w.name}: {w.about()}" for w in (BUSY, ELSEWHERE, ONE_USER))
        + "; the cache's outcomes come from the function's log lines.",
        "",
        "| case | conns | req/s | PG CPU ms/req | x seed (CPU) | x seed (req/s) "
        "| cache hit/miss/skip % | errors |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for case in cases:
        seed_case = seed_case_of(case)
        lines.append(
            f"| {case.name}: {case.about} | {case.connections} | {rps(case.name):,.1f} | "
            f"{cpu(case.name):.3f} | {ratio(case.name, seed_case)} | "
            f"{ratio(case.name, seed_case, rps)} | {shares(figures[case.name].outcomes)} | "
            f"{figures[case.name].errors} |"
        )
    plain, trig = extra.get("insert_plain_ms"), extra.get("insert_trigger_ms")
    lines += ["", "| target | value | met |", "|---|---:|---|"]
    for label, a, b, of, goal, higher in (
        ("idle table: PG CPU per request / seed's", "cache_idle", "seed_next", cpu, 0.25, False),
        (
            "writes elsewhere: PG CPU per request / seed's",
            "cache_busy",
            "seed_next_busy",
            cpu,
            3.0,
            False,
        ),
        ("c=8: req/s with the cache / without", "cache_c8", "no_cache_c8", rps, 1.0, True),
        ("#26 idle: PG CPU per request / seed's", "cache_idle", "seed_next", cpu, 0.15, False),
        (
            "#26 another table written, no user changed: PG CPU per request / seed's",
            "cache_elsewhere",
            "seed_next_elsewhere",
            cpu,
            0.6,
            False,
        ),
        (
            "#26 and one user updated: PG CPU per request / seed's",
            "cache_one_user",
            "seed_next_one_user",
            cpu,
            1.5,
            False,
        ),
    ):
        if figures[a].rps and figures[b].rps:
            value = of(a) / of(b)
            met = value >= goal if higher else value <= goal
            sign = ">=" if higher else "<="
            lines.append(
                f"| {label} {sign} {goal:g}x | {value:.2f}x | {'met' if met else 'NOT MET'} |"
            )
    if not extra:  # a run of chosen cases (--cases): no one-off figures
        return "\n".join([*lines, ""])
    lines += [
        "",
        f"- A writer's single-row INSERT into `users` (pgbench, one client, median of 3 "
        f"interleaved runs): {plain:.3f} ms "
        f"without the trigger, {trig:.3f} ms with sql/cache_version.sql "
        f"({trig - plain:+.3f} ms, {trig / plain:.2f}x); writers of `users` also queue on "
        "the version row until each commits.",
        f"- RSS of the function (gunicorn master + worker): {extra['rss_start_mb']:.0f} MB after "
        f"its first request, {extra['rss_full_mb']:.0f} MB with the cache full "
        f"({extra['cache_bytes_mb']:.1f} MiB in {extra['cache_entries']:.0f} entries, "
        f"bound RESPONSE_CACHE_MB's default); the same requests with the cache off: "
        f"{extra['rss_off_start_mb']:.0f} MB, then {extra['rss_off_mb']:.0f} MB.",
        f"- The probe alone (pgbench latency, one client): {extra['probe_ms']:.3f} ms; behind a "
        f"transaction pooler, with the system_identifier in every probe: "
        f"{extra['probe_pooler_ms']:.3f} ms; `SELECT 1`: {extra['select_1_ms']:.3f} ms.",
        f"- Recent hit rate of the idle run's cache (from /healthz): {extra['hit_rate_idle']:.2f}.",
        "",
    ]
    return "\n".join(lines)


def seed_case_of(case: Case) -> str:
    """The seed's case a case is compared with: the same writes and connections."""
    name = "seed_next" if case.writes is IDLE else f"seed_next_{case.writes.name}"
    return f"{name}_c8" if case.connections == 8 else name


def shares(counts: Counter[str]) -> str:
    total = sum(counts[k] for k in ("hit", "miss", "skip"))
    if not total:
        return "-"
    return "/".join(f"{100 * counts[k] / total:.0f}" for k in ("hit", "miss", "skip"))


def write_section(text: str, path: Path) -> None:
    """Put the section into BENCHMARKS.md, in place of the one there."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.S)
    doc = (
        pattern.sub(text.rstrip("\n"), doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text
    )
    path.write_text(doc.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-node", action="store_true")
    parser.add_argument("--python-client", action="store_true")
    parser.add_argument("--out", default=str(servers.ROOT / "BENCHMARKS.md"))
    parser.add_argument("--transactions", type=int, default=5000, help="per pgbench figure")
    parser.add_argument(
        "--cases",
        default="",
        help="only these cases (comma-separated), without the one-off figures",
    )
    args = parser.parse_args(argv)
    only = frozenset(c.strip() for c in args.cases.split(",") if c.strip())
    unknown = only - {c.name for c in CASES}
    if unknown:
        parser.error(f"no such case: {', '.join(sorted(unknown))}")
    use_wrk = loads.wrk_installed() and not args.python_client
    no_node = args.no_node or servers.node_missing() is not None
    if not no_node:
        servers.prepare_next([servers.ROOT / plan.SERVERS["seed_next"].app])
    started = time.monotonic()
    load = loads.load_wrk if use_wrk else loads.load_python
    text = run(args.rounds, args.seconds, load, no_node, args.transactions, only)
    text = text.replace("medians.", f"medians ({time.monotonic() - started:.0f} s).", 1)
    write_section(text, Path(args.out))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
