"""`make run`'s command: embedded PostgreSQL + seed + functions-framework, stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from devtools import seed
from tests.conftest import ROOT, free_port, wait_for_port


def run_local(datadir: Path, env: dict[str, str]) -> tuple[dict, str]:
    """`python -m devtools.devdb run` until its function answers one GET, then Ctrl-C.
    Returns the answer and everything the command printed."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.devdb", "run", "--datadir", str(datadir), "--users", "25"],
        cwd=ROOT,
        env={**env, "PORT": str(port), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, 60, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            body = json.loads(response.read())
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        output = process.communicate(timeout=30)[0]
    return body, output


def test_local_run_serves_seeded_users_and_stops_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    body, output = run_local(tmp_path / "data", env)
    assert len(body["users"]) == 25
    assert body["users"][0]["email"] == "user1@example.com"
    assert "serving http://127.0.0.1:" in output
    assert not (tmp_path / "data" / "postmaster.pid").exists()  # the database stopped too


def test_local_run_with_database_url_serves_that_database(admin, postgres, tmp_path):
    seed.seed_users(admin, 4, progress=False)
    body, _ = run_local(tmp_path / "unused", {**os.environ, "DATABASE_URL": postgres.admin_url})
    assert [u["id"] for u in body["users"]] == [1, 2, 3, 4]  # that table, not seeded to 25
    assert not (tmp_path / "unused").exists()  # no embedded server was started
