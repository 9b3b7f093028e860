"""Serving the variants: functions-framework for the Python ones, `next start` for the seed's.

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
from collections.abc import Iterable
from pathlib import Path

import psutil

from bench.plan import SERVERS, Server
from devtools.devdb import free_port, functions_framework

ROOT = Path(__file__).resolve().parent.parent
READY_S = 60
_NODE_ENV = {**os.environ, "NEXT_TELEMETRY_DISABLED": "1"}


class ServerFailed(RuntimeError):
    """A variant's server exited or never listened."""


def node_missing() -> str | None:
    """Why the Next.js variants cannot run here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: install Node.js 20.9+ to measure the seed's route"
    return None


def next_apps() -> list[Path]:
    """The Next.js apps of bench/plan.py (the seed's route, the App Router variant)."""
    return sorted({ROOT / s.app for s in SERVERS.values() if s.node})


def prepare_next(apps: Iterable[Path] | None = None) -> None:
    """For each app: `npm ci` (from its committed lockfile) and `next build`, each only when
    out of date. A production build, as the seed is deployed."""
    for app in next_apps() if apps is None else apps:
        install_next(app)
        build_next(app)


def install_next(app: Path) -> None:
    """`npm ci` from the app's committed lockfile, unless node_modules is newer than it."""
    modules, lock = app / "node_modules", app / "package-lock.json"
    if not modules.exists() or modules.stat().st_mtime < lock.stat().st_mtime:
        print(f"bench: npm ci in {app.relative_to(ROOT)} ...", flush=True)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=app,
            env=_NODE_ENV,
            check=True,
            timeout=600,
        )
        modules.touch()


def build_next(app: Path) -> None:
    """`next build`, unless the build is newer than the lockfile and every route's source."""
    build, lock = app / ".next" / "BUILD_ID", app / "package-lock.json"
    sources = [lock, *app.glob("app/**/*.js"), *app.glob("pages/**/*.js")]
    if not build.exists() or build.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        print(f"bench: next build in {app.relative_to(ROOT)} (production) ...", flush=True)
        subprocess.run(
            [str(app / "node_modules" / ".bin" / "next"), "build"],
            cwd=app,
            env=_NODE_ENV,
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
            cwd, env["NEXT_TELEMETRY_DISABLED"] = ROOT / server.app, "1"
            command = [str(cwd / "node_modules" / ".bin" / "next"), "start"]
            command += ["-H", "127.0.0.1", "-p", str(self.port)]
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
