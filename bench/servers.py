"""Serving the variants: functions-framework for the Python ones, `next start` for the seed.

A server that does not come up stops the benchmark with its log's tail (ServerFailed):
a report with a silently missing variant would compare against nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil

from bench.plan import Server
from devtools.devdb import free_port, functions_framework

ROOT = Path(__file__).resolve().parent.parent
NEXT_APP = ROOT / "bench" / "seed_next"
READY_S = 60


class ServerFailed(RuntimeError):
    """A variant's server exited or never listened."""


def node_missing() -> str | None:
    """Why the Next.js variant cannot run here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: install Node.js 20.9+ to measure the seed's route"
    return None


def prepare_next() -> None:
    """`npm ci` (from the committed lockfile) and `next build`, each only when out of date."""
    modules, build = NEXT_APP / "node_modules", NEXT_APP / ".next" / "BUILD_ID"
    lock = NEXT_APP / "package-lock.json"
    env = {**os.environ, "NEXT_TELEMETRY_DISABLED": "1"}
    if not modules.exists() or modules.stat().st_mtime < lock.stat().st_mtime:
        print("bench: npm ci in bench/seed_next (the seed's route) ...", flush=True)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NEXT_APP, env=env, check=True, timeout=600
        )
        modules.touch()
    sources = [lock, *NEXT_APP.glob("app/**/*.js")]
    if not build.exists() or build.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        print("bench: next build (production) ...", flush=True)
        subprocess.run(
            [str(NEXT_APP / "node_modules" / ".bin" / "next"), "build"],
            cwd=NEXT_APP,
            env=env,
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
        )


class Running:
    """One server process on 127.0.0.1, its log in `logdir`."""

    def __init__(
        self,
        server: Server,
        database_url: str,
        logdir: Path,
        extra_env: dict[str, str] | None = None,
        name: str | None = None,  # for the log file, when one server runs twice
    ) -> None:
        self.server, self.port = server, free_port()
        self.app_name = f"bench-{name or server.name}"
        self.url = f"http://127.0.0.1:{self.port}{server.path}"
        env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
        env.update(DB_APPLICATION_NAME=self.app_name, PGAPPNAME=self.app_name)
        for key in ("WORKERS", "THREADS"):  # functions-framework's defaults, as deployed
            env.pop(key, None)
        if server.node:
            command = [str(NEXT_APP / "node_modules" / ".bin" / "next"), "start"]
            command += ["-H", "127.0.0.1", "-p", str(self.port)]
            cwd, env["NEXT_TELEMETRY_DISABLED"] = NEXT_APP, "1"
        else:
            command = [functions_framework(), "--source", server.source, "--target", server.target]
            command += ["--host", "127.0.0.1", "--port", str(self.port)]
            cwd = ROOT
        env.update(extra_env or {})
        self.log = logdir / f"{name or server.name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"exited with status {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self._fail(f"did not listen on 127.0.0.1:{self.port} within {READY_S} s")

    def _fail(self, why: str) -> None:
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise ServerFailed(f"variant server '{self.server.name}' {why}; its log ends:\n{tail}")

    def rss_mb(self) -> float:
        """RSS of the whole process tree (gunicorn master + worker; next and next-server)."""
        try:
            procs = [psutil.Process(self.process.pid)]
            procs += procs[0].children(recursive=True)
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for child in children:  # next start leaves next-server behind on SIGTERM otherwise
            with contextlib.suppress(psutil.Error):
                child.kill()
