"""`make run`'s command: embedded PostgreSQL + seed + functions-framework, stopped by Ctrl-C."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devtools import seed
from devtools.devdb import EmbeddedPostgres, free_port
from tests import processes
from tests.load import get

ROUNDS = 10  # 2-3 s each; gunicorn's own quick shutdown hung in the first round


@pytest.fixture
def datadir() -> Iterator[Path]:
    """Where `make run` keeps its database; a server a failed test left running is stopped."""
    with processes.server_dir("devdb") as directory:
        yield directory / "data"
        EmbeddedPostgres(directory / "data").stop()


def start_local(
    datadir: Path, log: Path, database_url: str = "", port: int = 0
) -> processes.Launched:
    """`python -m devtools.devdb run` in a session of its own, as a terminal runs `make run`
    (a terminal's Ctrl-C is SIGINT to every process of the foreground process group); on
    `database_url` when given, else on the embedded server in `datadir`; on `port` or a
    free one."""
    port = port or free_port()
    command = [sys.executable, "-m", "devtools.devdb", "run", "--datadir", str(datadir)]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url:
        env["DATABASE_URL"] = database_url
    return processes.start(
        [*command, "--users", "25"],
        {**env, "PORT": str(port), "PYTHONUNBUFFERED": "1"},
        port,
        log,
        start_new_session=True,
    )


def ctrl_c(local: processes.Launched) -> tuple[float, list[psutil.Process]]:
    """SIGINT to the whole process group; the seconds until the command exited, and every
    process it had started that still runs (a zombie has ended: here PID 1 may not reap)."""
    family = [psutil.Process(local.process.pid), *psutil.Process(local.process.pid).children(True)]
    started = time.monotonic()
    os.killpg(local.process.pid, signal.SIGINT)
    try:
        local.process.wait(timeout=30)
    finally:
        seconds = time.monotonic() - started
        _, alive = psutil.wait_procs(family, timeout=0.5)
        alive = [p for p in alive if _running(p)]
        for process in alive:
            process.kill()
    return seconds, alive


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_local_run_serves_seeded_users_and_stops_cleanly(datadir, tmp_path):
    local = start_local(datadir, tmp_path / "run.log").wait_ready(60)
    status, body = get(local.base + "/")
    seconds, alive = ctrl_c(local)
    users = json.loads(body)["users"]
    assert status == 200 and len(users) == 25
    assert users[0]["email"] == "user1@example.com"
    assert "serving http://127.0.0.1:" in local.output()
    assert "users table ready: 25 users" in local.output()
    assert not alive and seconds <= 2
    assert not (datadir / "postmaster.pid").exists()  # the database stopped too
    assert local.process.returncode == 0  # stopping is how a local run ends
    assert local.output().splitlines()[-1] == "stopped: the function and the database. Bye."


@pytest.mark.slow
def test_local_run_reports_the_users_the_table_holds(datadir, tmp_path):
    """A table seeded bigger by an earlier run stays as it is: say what it holds."""
    server = EmbeddedPostgres(datadir).start()
    seed.seed_server(server.url(), 40)
    server.stop()
    local = start_local(datadir, tmp_path / "run.log").wait_ready(60)
    status, body = get(local.base + "/")
    ctrl_c(local)
    assert status == 200 and len(json.loads(body)["users"]) == 40
    assert "users table ready: 40 users (0 added)" in local.output()


@pytest.mark.slow
def test_local_run_with_database_url_serves_that_database(admin, postgres, tmp_path):
    seed.seed_users(admin, 4, progress=False)
    local = start_local(tmp_path / "unused", tmp_path / "run.log", postgres.admin_url)
    local.wait_ready(60)
    body = get(local.base + "/")[1]
    ctrl_c(local)
    assert [u["id"] for u in json.loads(body)["users"]] == [1, 2, 3, 4]  # not seeded to 25
    assert not (tmp_path / "unused").exists()  # no embedded server was started


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_always_stops_everything_within_2_s(datadir, tmp_path):
    """The terminal's SIGINT reaches every process of the group, gunicorn's worker included,
    at any moment: here, every other round, while 8 new connections are being accepted
    (gunicorn's own quick shutdown deadlocked there). Each time the command must exit within
    2 s, leave no process behind, stop the database, and print no traceback."""
    for round_ in range(ROUNDS):
        local = start_local(datadir, tmp_path / f"run-{round_}.log").wait_ready(60)
        assert get(local.base + "/healthz")[0] == 200  # the worker serves
        burst = 8 if round_ % 2 == 0 else 0
        opened = [socket.create_connection(("127.0.0.1", local.port)) for _ in range(burst)]
        seconds, alive = ctrl_c(local)
        for sock in opened:
            sock.close()
        output = local.output()
        assert not alive, f"round {round_}: left running: {alive}"
        assert seconds <= 2, f"round {round_}: stopped in {seconds:.1f} s\n{output}"
        assert not (datadir / "postmaster.pid").exists(), f"round {round_}: database running"
        assert "Traceback" not in output and "SystemExit" not in output, output


def finish(local: processes.Launched, seconds: float = 60) -> str:
    """Wait for a run that is expected to end by itself; its output."""
    try:
        local.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        ctrl_c(local)
        raise
    return local.output()


@pytest.mark.slow
def test_a_second_run_in_the_same_checkout_is_refused_and_disturbs_nothing(datadir, tmp_path):
    first = start_local(datadir, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while "serving http" not in first.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        socket.create_connection(("127.0.0.1", first.port), timeout=1).close()  # bound when said
        database = (datadir / "postmaster.pid").read_text()
        second = start_local(datadir, tmp_path / "second.log")
        refusal = finish(second)
        assert second.process.returncode == 1
        assert f"already running in this checkout (pid {first.process.pid}" in refusal
        assert f"serving http://127.0.0.1:{first.port}/" in refusal
        assert "DATABASE_URL='postgresql://users_reader:" in refusal  # how to share it instead
        assert (datadir / "postmaster.pid").read_text() == database  # not restarted, not moved
        assert get(first.base + "/")[0] == 200
    finally:
        ctrl_c(first)


@pytest.mark.slow
def test_a_configuration_error_is_said_and_serving_never_is(tmp_path):
    bad = "postgresql://u@127.0.0.1:1/db?bogus=1"
    local = start_local(tmp_path / "unused", tmp_path / "run.log", bad)
    output = finish(local)
    assert local.process.returncode != 0
    assert "configuration error: DATABASE_URL: unknown parameter 'bogus'" in output
    assert "serving http" not in output
    assert output.rstrip().endswith("its messages are above)")


@pytest.mark.slow
def test_a_port_in_use_is_said_before_anything_starts(datadir, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        local = start_local(datadir, tmp_path / "run.log", port=taken.getsockname()[1])
        started = time.monotonic()
        output = finish(local)
    assert local.process.returncode == 1 and time.monotonic() - started < 5
    assert output.strip() == (
        f"make run: 127.0.0.1:{local.port} is in use: stop what listens there, or choose "
        f"another port (PORT={local.port + 1} make run)"
    )
    assert not datadir.exists()  # no database was started for it


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_ends_make_run_with_status_0_and_one_goodbye(postgres):
    """In a terminal, Ctrl-C is SIGINT to the foreground process group: make must not get
    it, or it reports `*** [Makefile: run] Interrupt`, a failure."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    port = free_port()
    venv = ["-o", f"{sys.prefix}/.installed", f"VENV={sys.prefix}"]  # this venv, as it is
    env = {**os.environ, "DATABASE_URL": postgres.admin_url, "PORT": str(port)}
    with terminal() as (master, slave):
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run", *venv],
            cwd=processes.ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        try:
            output = read_until(master, b"serving http", 60)
            os.write(master, b"\x03")  # the terminal's Ctrl-C
            status = make.wait(timeout=10)
            output += read_until(master, None, 2)
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
    shown = output.decode(errors="replace")
    assert status == 0, shown
    assert shown.rstrip().endswith("stopped: the function. Bye.") and shown.count("Bye.") == 1
    assert "Interrupt" not in shown and "Error" not in shown, shown


@contextlib.contextmanager
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (master, slave) file descriptors, both closed afterwards."""
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(slave)
        os.close(master)


def read_until(fd: int, marker: bytes | None, seconds: float) -> bytes:
    """What the terminal shows until `marker` (or its end, or `seconds`)."""
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (marker is None or marker not in out):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # every writer has closed its end
                break
            if not chunk:
                break
            out += chunk
    return out
