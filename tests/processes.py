"""The one launcher of the processes tests start: the function as users run it
(`functions-framework --target users`), `make run`'s command, PgBouncer. Each listens on
127.0.0.1, is waited for until it accepts connections, and is always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from devtools.devdb import free_port, functions_framework

ROOT = Path(__file__).resolve().parent.parent


def wait_for_port(port: int, seconds: float, process: subprocess.Popen | None = None) -> None:
    """Until a server listens on 127.0.0.1:port; fail if `process` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {seconds} s")


@contextlib.contextmanager
def server_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory for a server's files, removed afterwards. Not under pytest's
    tmp_path: as root the servers run as `nobody`, and every pytest session that starts
    takes other users' access to pytest's root directory away, even from a running one."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Launched:
    """A started process serving on 127.0.0.1:port; its output in `log` when one was asked."""

    process: subprocess.Popen
    port: int
    log: Path | None = None
    worker: int = 0  # the gunicorn worker's pid, for tests that check it is never replaced

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def wait_ready(self, seconds: float = 20) -> Launched:
        wait_for_port(self.port, seconds, self.process)
        return self

    def worker_pid(self) -> int:
        """The gunicorn worker serving requests (the master forks it after binding)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = psutil.Process(self.process.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.05)
        raise RuntimeError("no gunicorn worker")


def start(
    command: list[str],
    env: dict[str, str],
    port: int,
    log: Path | None = None,
    **popen: object,
) -> Launched:
    """Start `command` (not waiting for it: see Launched.wait_ready), output to `log`."""
    with open(log or os.devnull, "wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, **popen
        )
    return Launched(process, port, log)


def function_env(**env: str) -> dict[str, str]:
    """This environment without a database setting of its own, plus `env`."""
    base = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "INSTANCE_CONNECTION_NAME")
    }
    return {**base, "PYTHONUNBUFFERED": "1", **env}


def start_function(env: dict[str, str], log: Path | None = None) -> Launched:
    """`functions-framework --target users` on a free 127.0.0.1 port, as users run it."""
    port = free_port()
    command = [functions_framework(), "--target", "users", "--host", "127.0.0.1"]
    return start([*command, "--port", str(port)], function_env(**env), port, log)


def stop(launched: list[Launched], timeout: float = 10) -> None:
    """SIGTERM to all at once, then wait for each (SIGKILL past `timeout`)."""
    for one in launched:
        if one.process.poll() is None:
            one.process.terminate()
    for one in launched:
        try:
            one.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            one.process.kill()
            one.process.wait()
