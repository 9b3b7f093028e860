"""The benchmark still runs end to end (tiny sizes, one round): it must not rot between runs."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys

import pytest

from bench import plan, servers
from bench import run as bench_run
from devtools import seed
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

QUICK = ["--max-users", "10", "--rounds", "1", "--seconds", "1", "--python-client"]
QUICK += ["--no-chart", "--no-node", "--import-runs", "1", "--no-cache-bench"]


def test_bench_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", *QUICK, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    floors = ("floor", "floor_select1")
    cpu = {}
    for variant in ("users", "json_agg_fn", "users_nullpool", "users_rows", *floors):
        row = re.search(rf"^\| 10 \| 8 \| {variant} \|(.*)$", report, re.M)
        assert row, variant
        cells = row.group(1).split("|")
        assert cells[4].strip() == "0", (variant, "errors")
        cpu[variant] = float(cells[7])  # PG CPU ms/req: measured, not a placeholder
    # The floor sends no statement: what it shows is the cluster's own background processes
    # (checkpointer, walwriter, autovacuum: bench/measure.py counts every process of the
    # cluster) spread over its requests, a few microseconds at most.
    assert cpu["floor"] < 0.05 * cpu["floor_select1"], cpu
    assert all(cpu[v] > 0 for v in cpu if v != "floor"), cpu
    assert "**seed_next** not run: --no-node given" in report
    assert "**seed_next_app** not run: --no-node given" in report
    assert "| page statement (this function) |" in report
    assert re.search(r"10 users x 8 conns: users / seed req/s \| not measured", report)
    peak = re.search(r"peak DB connections of users, any cell \| ([\d.]+)", report)
    assert peak and 1 <= float(peak.group(1)) <= 5


def test_cache_bench_smoke(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Targets\n\nkept\n")
    command = [sys.executable, "-m", "bench.cache", "--rounds", "1", "--seconds", "1"]
    command += ["--no-node", "--python-client", "--transactions", "200", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert "## Targets\n\nkept" in report and "## The response cache" in report
    cases = ("no_cache", "cache_idle", "cache_304", "cache_busy", "trigger_busy")
    for case in (*cases, "cache_elsewhere", "cache_one_user", "trigger_one_user"):
        row = re.search(rf"^\| {case}: [^|]* \| 4 \|(.*)$", report, re.M)
        assert row, case
        rps, cpu, *_, errors = (cell.strip() for cell in row.group(1).split("|")[:-1])
        assert float(rps.replace(",", "")) > 0 and float(cpu) > 0 and errors == "0", case
    assert re.search(r"with the cache full \([\d.]+ MiB", report)


def test_a_variant_whose_server_never_comes_up_fails_the_run(tmp_path, monkeypatch, capsys):
    broken = plan.Server("floor", "bench/no_such_file.py", "floor")
    monkeypatch.setitem(plan.SERVERS, "floor", broken)
    assert bench_run.main([*QUICK, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bench: FAILED: variant server 'floor' exited" in err
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_a_variant_that_answers_errors_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(plan.SERVERS, "floor", plan.Server("floor", "main.py", "users", "/?x=1"))
    assert bench_run.main([*QUICK, "--out", str(tmp_path)]) == 1
    assert "bench: FAILED: variant 'floor' answered 400: " in capsys.readouterr().err


def test_filters_run_only_the_chosen_cells_and_variants(tmp_path):
    """BENCH_ARGS="--cells 10x8 --variants floor,floor_select1": a quick partial run."""
    only = ["--cells", "10x8", "--variants", "floor,floor_select1", "--no-statements"]
    command = [sys.executable, "-m", "bench.run", *QUICK, *only, "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    rows = re.findall(r"^\| ([\d,]+) \| (\d+) \| (\w+) \|", report, re.M)
    assert sorted(rows) == [("10", "8", "floor"), ("10", "8", "floor_select1")]
    assert "## The page statement" not in report


def test_cache_bench_runs_the_chosen_cases(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, "-m", "bench.cache", "--rounds", "1", "--seconds", "1"]
    command += ["--no-node", "--python-client", "--out", str(out)]
    command += ["--cases", "cache_elsewhere,cache_one_user"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    assert re.findall(r"^\| (\w+): ", report, re.M) == ["cache_elsewhere", "cache_one_user"]
    assert "with the cache full" not in report  # one-off figures only in a whole run


def test_the_writers_write_what_the_case_says(postgres, admin):
    """`elsewhere` inserts into another table only; `one_user` also updates one user, in
    place, about 20 times a second; both loops stop with the block."""
    from bench import cache

    seed.seed_users(admin, cache.USERS, progress=False)
    cursor = admin.cursor()
    cursor.execute(f"SELECT name FROM users WHERE id = {cache.UPDATED_USER}")
    [[before]] = cursor.fetchall()
    for writes in (cache.ELSEWHERE, cache.ONE_USER):
        cursor.execute("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'users'")
        with cache.writer(postgres.admin_url, writes) as pids:
            assert len(pids) == (2 if writes.user_per_s else 1)
            cursor.execute("SELECT pg_sleep(1.0)")
            cursor.execute("SELECT count(*) FROM elsewhere")
            [[inserted]] = cursor.fetchall()
        cursor.execute(f"SELECT name FROM users WHERE id = {cache.UPDATED_USER}")
        [[after]] = cursor.fetchall()
        assert 100 <= inserted <= 400, (writes.name, inserted)  # every ~3 ms (and a statement)
        assert (after != before) == bool(writes.user_per_s), writes.name
    cursor.execute("SELECT count(*) FROM users")
    assert cursor.fetchone()[0] == cache.USERS


SEED_ROUTE = ROOT / "bench" / "seed_next" / "pages" / "api" / "users.js"


def test_the_reference_is_the_seeds_own_pages_router_route():
    """The seed is a Pages Router API route: a module-level Pool of 5, SELECT * FROM users,
    res.status(200).json({ users: rows }). No App Router files in the same app: the build,
    and so the server, would not be the seed's."""
    assert plan.SEED == "seed_next" and plan.SERVERS[plan.SEED].app == "bench/seed_next"
    assert plan.SERVERS[plan.SEED].path == "/api/users"
    app = ROOT / "bench" / "seed_next"
    assert not (app / "app").exists() and not (app / "src").exists()
    assert sorted(p.relative_to(app).as_posix() for p in app.glob("pages/**/*.js")) == [
        "pages/api/users.js"
    ]
    code = SEED_ROUTE.read_text()
    handler = code.index("export default async function handler(req, res) {")
    pool = re.search(r"^const pool = new Pool\(\{ max: 5, connectionString[^}]*\}\);$", code, re.M)
    assert pool and pool.start() < handler  # module level: one pool per process
    assert 'import { Pool } from "pg";' in code
    assert re.search(r'const \{ rows \} = await pool\.query\("SELECT \* FROM users"\);', code)
    assert "res.status(200).json({ users: rows });" in code
    assert "Response.json" not in code and "export const dynamic" not in code


def test_the_app_router_variant_pins_the_seeds_versions():
    """seed_next_app differs from the seed in its route file alone: the same dependencies,
    resolved to the same versions."""
    seed_app, other = ROOT / "bench" / "seed_next", ROOT / "bench" / "seed_next_app"
    deps = [json.loads((d / "package.json").read_text())["dependencies"] for d in (seed_app, other)]
    assert deps[0] == deps[1] and all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in deps[0].values())

    def resolved(app):
        packages = json.loads((app / "package-lock.json").read_text())["packages"]
        return {k: (v.get("version"), v.get("integrity")) for k, v in packages.items() if k}

    assert resolved(seed_app) == resolved(other)
    assert (other / "app" / "api" / "users" / "route.js").exists()
    assert not (other / "pages").exists()


@pytest.mark.skipif(servers.node_missing() is not None, reason="Node.js/npm not installed")
def test_the_seeds_route_answers_as_the_seed(postgres, admin, tmp_path):
    """Built with `next build`, served by `next start`: the seed's envelope over every row,
    as Next's Pages API `res.json` sends it (a length and an ETag of the body)."""
    app = ROOT / "bench" / "seed_next"
    try:
        servers.install_next(app)
    except subprocess.CalledProcessError as exc:  # npm ci needs the registry
        pytest.skip(f"npm ci failed (no registry?): {exc}")
    servers.build_next(app)
    seed.seed_users(admin, 3, progress=False)
    running = servers.Running(
        plan.SERVERS[plan.SEED], postgres.url(query="sslmode=disable"), tmp_path
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        conn.request("GET", "/api/users")
        response = conn.getresponse()
        body = response.read()
    finally:
        running.stop()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json; charset=utf-8"
    assert response.getheader("ETag") and int(response.getheader("Content-Length")) == len(body)
    users = json.loads(body)["users"]
    assert [u["id"] for u in users] == ["1", "2", "3"]  # node-postgres: bigint as a string
    assert set(users[0]) == {"id", "email", "name", "created_at"}
