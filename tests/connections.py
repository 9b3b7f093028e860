"""The one sampler of the server's connections (pg_stat_activity): the function's (its
application_name) or a role's, now, at their peak while something runs, or ended on demand."""

from __future__ import annotations

import threading
import time

import pg8000.dbapi

from devtools import seed

APP_NAME = "users-function"  # lib/config.py's default DB_APPLICATION_NAME

_CLIENTS = "FROM pg_stat_activity WHERE backend_type = 'client backend' AND "
_OF_FUNCTION = _CLIENTS + "application_name = %s"
_OF_ROLE = _CLIENTS + "usename = %s"


def function_connections(conn: pg8000.dbapi.Connection, role: str | None = None) -> int:
    """The function's connections; with `role`, every connection of that role (what a
    pooler opens on the function's behalf carries no application_name of ours)."""
    cursor = conn.cursor()
    cursor.execute(f"SELECT count(*) {_OF_ROLE if role else _OF_FUNCTION}", (role or APP_NAME,))
    return cursor.fetchone()[0]


def function_backends(conn: pg8000.dbapi.Connection) -> list[int]:
    """The server processes of the function's connections: which connections these are."""
    cursor = conn.cursor()
    cursor.execute(f"SELECT pid {_OF_FUNCTION} ORDER BY pid", (APP_NAME,))
    return [row[0] for row in cursor.fetchall()]


def terminate_function_connections(conn: pg8000.dbapi.Connection) -> int:
    cursor = conn.cursor()
    cursor.execute(f"SELECT count(pg_terminate_backend(pid)) {_OF_FUNCTION}", (APP_NAME,))
    return cursor.fetchone()[0]


def wait_for_no_function_connections(conn: pg8000.dbapi.Connection, seconds: float) -> int:
    """Poll until the function holds no connection or `seconds` pass; what it holds then."""
    deadline = time.monotonic() + seconds
    while (left := function_connections(conn)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class PeakConnections:
    """While in the `with` block, samples function_connections (or a role's) every
    `interval` seconds on a connection of its own; `peak` is the highest count seen."""

    def __init__(self, admin_url: str, role: str | None = None, interval: float = 0.005) -> None:
        self.admin_url, self.role, self.interval = admin_url, role, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakConnections:
        self._conn = seed.connect(self.admin_url)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, function_connections(self._conn, self.role))
            self._stop.wait(self.interval)
