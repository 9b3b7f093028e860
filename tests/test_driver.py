"""The driver boundary (lib/postgres/driver.py): what it promises, and the pg8000 internals it
leans on.

pg8000 has no public API for the authentication hook or for the read timeout after login, so
lib/postgres/driver.py uses `handle_AUTHENTICATION_REQUEST` and `_usock`. These tests fail
loudly, with a message naming the internal, when a pg8000 upgrade moves one of them.
"""

from __future__ import annotations

import socket
import time

import pg8000.core
import pytest

from lib.errors import ConnectMisconfigured, Disconnected, ServerError
from lib.postgres import driver


def login(postgres, **overrides) -> driver.Connection:
    sock = socket.create_connection((postgres.host, postgres.port), timeout=5)
    args = {
        "user": postgres.user.encode(),
        "database": postgres.database.encode(),
        "password": postgres.password.encode(),
        "timeout": 5.0,
        "application_name": b"driver-test",
        "startup_params": {},
        "allow": lambda method: None,
        "bind_channel": True,
        **overrides,
    }
    conn = driver.connect(sock, **args)
    conn.autocommit = True  # as the pool sets it (isolation_level AUTOCOMMIT)
    return conn


def test_pg8000_still_has_the_authentication_hook_we_override():
    assert hasattr(pg8000.core.CoreConnection, "handle_AUTHENTICATION_REQUEST"), (
        "pg8000 renamed handle_AUTHENTICATION_REQUEST: lib/postgres/driver.py's Connection no "
        "longer "
        "checks channel_binding/require_auth before sending a password"
    )


def test_the_policy_is_asked_before_the_login_completes(postgres):
    asked: list[str] = []
    conn = login(postgres, allow=asked.append)
    conn.close()
    assert asked, "the authentication hook was never called: pg8000 changed its login"
    assert asked[0] in ("none", "password", "md5", "scram-sha-256", "scram-sha-256-plus")

    def refuse(method: str) -> None:
        raise ConnectMisconfigured(f"not {method}")

    with pytest.raises(ConnectMisconfigured):
        login(postgres, allow=refuse)


def test_the_socket_we_hand_over_is_the_one_pg8000_reads(postgres):
    conn = login(postgres)
    try:
        assert isinstance(getattr(conn, "_usock", None), socket.socket), (
            "pg8000 no longer keeps its socket in _usock: lib/postgres/driver.py's "
            "set_read_timeout "
            "and the channel_binding=disable workaround need another way in"
        )
    finally:
        conn.close()


@pytest.mark.slow
def test_the_read_timeout_bounds_a_statement(postgres):
    conn = login(postgres)
    driver.set_read_timeout(conn, 0.3)
    started = time.monotonic()
    with pytest.raises((Disconnected, OSError)):
        driver.fetch(conn, "SELECT pg_sleep(3)")
    assert time.monotonic() - started < 2, "the read timeout did not reach pg8000's socket"


def test_errors_come_out_as_ours(postgres):
    conn = login(postgres)
    with pytest.raises(ServerError) as raised:
        driver.fetch(conn, "SELECT * FROM no_such_table_here")
    assert raised.value.sqlstate == "42P01" and "no_such_table_here" in raised.value.message
    assert isinstance(raised.value.__cause__, pg8000.dbapi.DatabaseError)  # kept for the log
    assert [tuple(row) for row in driver.fetch(conn, "SELECT 1")] == [(1,)]  # still usable
    conn.close()
    with pytest.raises(Disconnected):
        driver.fetch(conn, "SELECT 1")


def test_a_refused_login_is_a_server_error_with_its_sqlstate(postgres):
    with pytest.raises(ServerError) as raised:
        login(postgres, database=b"no_such_database_here")
    assert raised.value.sqlstate == "3D000"


def test_translate_knows_only_the_drivers_exceptions():
    assert driver.translate(ValueError("x")) is None
    fields = {"S": "FATAL", "C": "57P03", "M": "the database system is starting up"}
    ours = driver.translate(pg8000.dbapi.DatabaseError(fields))
    assert isinstance(ours, ServerError) and ours.sqlstate == "57P03"
    assert isinstance(driver.translate(pg8000.dbapi.InterfaceError("network error")), Disconnected)
