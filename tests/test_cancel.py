"""Cancel on leave and at the deadline: a statement nobody will use is cancelled on the
server (a CancelRequest), and its connection goes back to the pool healthy."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import pg8000.dbapi
import pytest

from devtools import seed
from lib.postgres import driver
from tests.conftest import insert_users, slow_users
from tests.connections import APP_NAME, function_backends

pytestmark = pytest.mark.slow

SLEEPY = "(SELECT pg_sleep(CASE WHEN r.email = 'slow@example.com' THEN 5 ELSE 0 END))"


def running_statements(admin, sleeping: bool = False) -> int:
    """The function's statements running now; `sleeping`: only those in the page's sleep
    (not a login's or the column check's, which end before a cancel could reach them)."""
    cursor = admin.cursor()
    cursor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
        + (" AND wait_event = 'PgSleep'" if sleeping else ""),
        (APP_NAME,),
    )
    return cursor.fetchone()[0]


def seconds_until_no_statement_runs(admin, most: float = 5) -> float:
    started = time.monotonic()
    while running_statements(admin) and time.monotonic() - started < most:
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def sleepy(admin):
    """`users` whose every page sleeps 5 s, until `wake()` makes it fast again."""
    insert_users(admin, [("slow@example.com", "S", "2024-01-01T00:00:00Z")])
    slow_users(admin, SLEEPY)
    return lambda: admin.cursor().execute("DELETE FROM real_users")


def test_pg8000_keeps_what_a_cancel_needs(postgres):
    conn = seed.connect(postgres.admin_url)
    try:
        assert len(conn._backend_key_data) == 8 and conn._usock.getpeername()
        threading.Timer(0.3, driver.cancel, (conn,)).start()
        started = time.monotonic()
        with pytest.raises(pg8000.dbapi.DatabaseError) as raised:
            conn.cursor().execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2
        assert raised.value.args[0]["C"] == "57014"  # query_canceled
        conn.cursor().execute("SELECT 1")  # the connection goes on
    finally:
        conn.close()


def test_the_deadline_cancels_the_statement_and_keeps_the_connection(
    admin, sleepy, make_app, capsys
):
    client = make_app(REQUEST_TIMEOUT="1", DB_POOL_SIZE="1").test_client()
    main = sys.modules["main"]
    started = time.monotonic()
    response = client.get("/?limit=5")
    assert time.monotonic() - started < 2
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "deadline_exceeded"
    lines = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert "cancelled a running statement: deadline" in [line["message"] for line in lines]
    assert [line["cancelled"] for line in lines if "httpRequest" in line] == ["deadline"]
    assert seconds_until_no_statement_runs(admin) < 1
    assert main.DB.pool_state()["in_use"] == 0
    [backend] = function_backends(admin)
    sleepy()
    assert client.get("/").get_json() == {"users": []}
    assert function_backends(admin) == [backend]  # the same connection, healthy


def test_a_client_that_leaves_has_its_statement_cancelled(admin, sleepy, serve):
    served = serve(DB_POOL_SIZE="1")
    with socket.create_connection(("127.0.0.1", served.port)) as client:
        client.sendall(b"GET /?limit=5 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        deadline = time.monotonic() + 5
        while not running_statements(admin, sleeping=True) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running_statements(admin, sleeping=True) == 1
    left = time.monotonic()
    seconds_until_no_statement_runs(admin)
    assert time.monotonic() - left < 1  # without the cancel: the 5 s sleep
    [backend] = function_backends(admin)
    sleepy()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        health = client.makefile("rb").read().split(b"\r\n\r\n", 1)[1]
    assert json.loads(health)["pool"]["in_use"] == 0
    assert function_backends(admin) == [backend]  # back in the pool, not replaced
    log = served.output()
    assert "cancelled a running statement: client_left" in log
    [line] = [json.loads(text) for text in log.splitlines() if '"status":499' in text]
    assert line["cancelled"] == "client_left"
