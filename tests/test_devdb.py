"""`make run`'s command: embedded PostgreSQL + seed + functions-framework, stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.conftest import ROOT, free_port


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
