"""`make run`'s command: embedded PostgreSQL + seed + functions-framework, stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from lib import seed
from tests.conftest import ROOT, free_port, wait_for_port


def test_local_run_serves_seeded_users_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(PORT=str(port), PYTHONUNBUFFERED="1")
    datadir = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "lib.devdb", "run", "--datadir", str(datadir), "--users", "25"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, body = time.monotonic() + 60, None
        while body is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.1)
        assert body is not None, "the local function never answered"
        assert len(body["users"]) == 25
        assert body["users"][0]["email"] == "user1@example.com"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        output = process.communicate(timeout=30)[0]
    assert "serving http://127.0.0.1:" in output
    assert not (datadir / "postmaster.pid").exists()  # the database stopped too


def test_local_run_with_database_url_serves_that_database(admin, postgres, tmp_path):
    seed.seed_users(admin, 4, progress=False)
    port = free_port()
    env = {**os.environ, "PORT": str(port), "DATABASE_URL": postgres.admin_url}
    datadir = tmp_path / "unused"
    process = subprocess.Popen(
        [sys.executable, "-m", "lib.devdb", "run", "--datadir", str(datadir), "--users", "25"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            body = json.loads(response.read())
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert [u["id"] for u in body["users"]] == [1, 2, 3, 4]  # that table, not seeded to 25
    assert not datadir.exists()  # no embedded server was started
