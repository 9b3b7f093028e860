"""The benchmark still runs end to end (tiny sizes, one round): it must not rot between runs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench import plan
from bench import run as bench_run
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
    for variant in ("users", "json_agg_fn", "users_nullpool", "users_rows", "floor"):
        row = re.search(rf"^\| 10 \| 8 \| {variant} \|(.*)$", report, re.M)
        assert row, variant
        cells = row.group(1).split("|")
        assert cells[4].strip() == "0", (variant, "errors")
        cpu = float(cells[7])  # PG CPU ms/req: measured, not a placeholder
        assert (cpu > 0) == (variant != "floor"), (variant, cpu)
    assert "**seed_next** not run: --no-node given" in report
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
    for case in ("no_cache", "cache_idle", "cache_304", "cache_busy", "trigger_busy"):
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
