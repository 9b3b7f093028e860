"""The Makefile: the virtualenv follows PYTHON, and no target prints a secret."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.slow

PYTHONS = glob.glob("/root/.pyenv/versions/3.1[123].*/bin/python3.1[123]")
# Interpreters other than the one running the tests.
OTHER_PYTHONS = sorted(
    p for p in PYTHONS if os.path.realpath(p) != os.path.realpath(sys._base_executable)
)


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def python_id(python: str) -> str:
    return subprocess.run(
        [
            python,
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable), sys.version.split()[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def built_venv(tmp_path: Path) -> Path:
    """A virtualenv directory as `make` leaves it, built from this test's interpreter."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".python").write_text(python_id(sys._base_executable) + "\n")
    (venv / ".installed").touch()  # newer than the requirements files
    return venv


def test_the_virtualenv_is_up_to_date_for_the_python_it_was_built_with(built_venv):
    stamp = f"{built_venv}/.installed"
    same = make("-q", stamp, f"VENV={built_venv}", f"PYTHON={sys._base_executable}")
    assert same.returncode == 0, same.stdout + same.stderr


@pytest.mark.skipif(not OTHER_PYTHONS, reason="no other Python 3.11-3.13 under /root/.pyenv")
def test_another_python_rebuilds_the_virtualenv(built_venv):
    stamp = f"{built_venv}/.installed"
    other = make("-q", stamp, f"VENV={built_venv}", f"PYTHON={OTHER_PYTHONS[-1]}")
    assert other.returncode == 1  # out of date: `make test` would rebuild it
    plan = make("-n", stamp, f"VENV={built_venv}", f"PYTHON={OTHER_PYTHONS[-1]}").stdout
    assert f"{OTHER_PYTHONS[-1]} -m venv --clear {built_venv}" in plan


def test_a_python_that_does_not_run_is_named(built_venv):
    result = make(f"{built_venv}/.installed", f"VENV={built_venv}", "PYTHON=/nonexistent/python")
    assert result.returncode != 0
    assert "PYTHON=/nonexistent/python does not run" in result.stderr


@pytest.fixture
def planner_url(admin, postgres):
    """A role that can log in with a marked password (no privilege needed to plan)."""
    admin.cursor().execute("CREATE ROLE planner LOGIN PASSWORD 'PW-PLAN-MARKER'")
    yield postgres.url("planner", "PW-PLAN-MARKER")
    admin.cursor().execute("DROP ROLE planner")


@pytest.mark.parametrize("how", ["environment", "arguments"])
def test_make_plan_never_prints_the_password(planner_url, how):
    venv = ["-o", f"{sys.prefix}/.installed", f"VENV={sys.prefix}"]  # this venv, as it is
    if how == "environment":
        result = make("plan", *venv, env={"PLAN_DATABASE_URL": planner_url})
    else:
        result = make("plan", *venv, f"PLAN_ARGS=--url {planner_url}")
    assert result.returncode == 0, result.stderr
    assert "max_connections 100 - reserved 3" in result.stdout  # read from the server
    assert "PW-PLAN-MARKER" not in result.stdout + result.stderr
