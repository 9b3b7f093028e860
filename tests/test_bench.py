"""The benchmark still runs end to end (tiny sizes, one round): it must not rot between runs."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_smoke(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--max-users",
            "10",
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--python-client",
            "--no-chart",
            "--import-runs",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    for variant in ("users", "users_nullpool", "users_rows", "floor"):
        assert f"| 10 | 8 | {variant} |" in report
    assert "10 users, 8 conns: users / users_nullpool" in report
    peak = re.search(r"peak DB connections of users, any cell \| ([\d.]+)", report)
    assert peak and 1 <= float(peak.group(1)) <= 5
