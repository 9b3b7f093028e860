"""A database that wakes (a standby being promoted, a server starting: 57P03) is waited for:
a request that arrives meanwhile is served if the database answers within
DB_CONNECT_TIMEOUT. One that is down (nothing listening) is a 503 (Retry-After) at once, and
served again by the next attempt once it is back (lib/postgres/gate.py). Real servers of
their own: these tests stop, start and promote them. tests/test_outage.py has the same under
gunicorn, with many requests at once."""

from __future__ import annotations

import threading
import time

import pg8000.dbapi
import pytest

from devtools import seed
from devtools.devdb import SUPERUSER, SUPERUSER_PASSWORD, EmbeddedPostgres, free_port
from tests import processes

pytestmark = pytest.mark.slow

BUDGET = 5.0  # DB_CONNECT_TIMEOUT
WAKES_AFTER = 1.5  # seconds after the request arrives


@pytest.fixture(scope="module")
def sleeper():
    """A seeded server, stopped, and a hot standby of it (never started yet)."""
    with processes.server_dir("pgwake") as directory:
        directory.chmod(0o777)  # as root the servers run as nobody, and write here
        server = EmbeddedPostgres(directory / "primary").start()
        seed.seed_server(server.url(), 3)
        standby = server.standby(directory / "standby")
        standby.settings += ("hot_standby=off",)  # answers 57P03 until promoted
        server.stop()
        try:
            yield server, standby
        finally:
            standby.stop("immediate")
            server.stop("immediate")


def later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def promote(standby: EmbeddedPostgres) -> None:
    standby._run("pg_ctl", "-D", str(standby.datadir), "-w", "promote")  # as its own user


def timed_get(client) -> tuple[object, float]:
    started = time.monotonic()
    response = client.get("/")
    return response, time.monotonic() - started


def test_a_stopped_database_is_a_503_at_once_and_serves_once_started(sleeper, make_app):
    """Refused while stopped: answered at once, without waiting for the budget. Once it has
    started, the next attempt (at most one interval later) serves. A wrong password is
    answered at once too: a misconfiguration is never waited for."""
    server, _ = sleeper
    client = make_app(DATABASE_URL=server.url(), DB_CONNECT_TIMEOUT=str(BUDGET)).test_client()
    down, down_in = timed_get(client)
    server.start()
    try:
        started = time.monotonic()
        served, served_at = down, 0.0
        while time.monotonic() - started < 3 and served.status_code != 200:
            served, _ = timed_get(client)
            served_at = time.monotonic() - started
            time.sleep(0.05)
        wrong = make_app(DATABASE_URL=server.url(password="wrong"), DB_CONNECT_TIMEOUT=str(BUDGET))
        refused, refused_in = timed_get(wrong.test_client())
    finally:
        server.stop()
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    assert down_in < 0.5
    assert served.status_code == 200, served.get_json()
    assert len(served.get_json()["users"]) == 3
    assert served_at < 1.25 + 0.5  # the interval after the failure, at most
    assert refused.status_code == 500 and refused_in < 1.0


def test_a_standby_answering_57p03_serves_every_request_once_promoted(sleeper, make_app):
    """57P03 "not accepting connections" (hot_standby=off) until `pg_ctl promote`: every
    request that arrives meanwhile waits, and each is served once it is promoted."""
    _, standby = sleeper
    standby.start()
    try:
        with pytest.raises(pg8000.dbapi.DatabaseError, match="57P03"):  # what it meets first
            pg8000.dbapi.connect(SUPERUSER, password=SUPERUSER_PASSWORD, port=standby.port)
        app = make_app(DATABASE_URL=standby.url(), DB_CONNECT_TIMEOUT=str(BUDGET))
        promoting = later(WAKES_AFTER, lambda: promote(standby))
        replies: list[tuple[object, float]] = []
        arriving = []
        for _ in range(5):  # one every 0.25 s, while it is still a standby
            thread = threading.Thread(target=lambda: replies.append(timed_get(app.test_client())))
            thread.start()
            arriving.append(thread)
            time.sleep(0.25)
        for thread in arriving:
            thread.join(30)
        promoting.join(30)
    finally:
        standby.stop()
    assert len(replies) == 5
    for response, waited in replies:
        assert response.status_code == 200, response.get_json()
        assert waited < BUDGET
    assert max(waited for _, waited in replies) >= WAKES_AFTER - 1.0  # the first one waited


@pytest.mark.parametrize("budget", [1.0, 2.5])
def test_a_database_that_is_down_is_a_503_at_once_whatever_the_budget(budget, make_app):
    url = f"postgresql://u:p@127.0.0.1:{free_port()}/db?sslmode=disable"  # nothing listens
    client = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT=str(budget)).test_client()
    for _ in range(3):  # the failed attempt, then answered from it
        response, waited = timed_get(client)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["error"]["code"] == "database_unavailable"
        assert waited < 0.3
