"""A database that wakes (scale to zero, a restart, a standby being promoted): a request that
arrives meanwhile is served if the database answers within DB_CONNECT_TIMEOUT, and gets its
503 (Retry-After) only once that budget is spent (lib/connect_url.connect). Real servers of
their own: these tests stop, start and promote them."""

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


def test_a_request_while_the_database_starts_is_served_once_it_answers(sleeper, make_app):
    """Refused while stopped, then (briefly) 57P03 while starting: tried again, served. A
    wrong password is still answered at once: a misconfiguration is never tried again."""
    server, _ = sleeper
    client = make_app(DATABASE_URL=server.url(), DB_CONNECT_TIMEOUT=str(BUDGET)).test_client()
    starting = later(WAKES_AFTER, server.start)
    try:
        response, waited = timed_get(client)
        starting.join(30)
        wrong = make_app(DATABASE_URL=server.url(password="wrong"), DB_CONNECT_TIMEOUT=str(BUDGET))
        refused, refused_in = timed_get(wrong.test_client())
    finally:
        starting.join(30)
        server.stop()
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["users"]) == 3
    assert WAKES_AFTER <= waited < BUDGET
    assert refused.status_code == 500 and refused_in < 1.0


def test_a_standby_answering_57p03_serves_once_promoted(sleeper, make_app):
    """57P03 "not accepting connections" (hot_standby=off) until `pg_ctl promote`."""
    _, standby = sleeper
    standby.start()
    try:
        with pytest.raises(pg8000.dbapi.DatabaseError, match="57P03"):  # what it meets first
            pg8000.dbapi.connect(SUPERUSER, password=SUPERUSER_PASSWORD, port=standby.port)
        client = make_app(DATABASE_URL=standby.url(), DB_CONNECT_TIMEOUT=str(BUDGET)).test_client()
        promoting = later(WAKES_AFTER, lambda: promote(standby))
        response, waited = timed_get(client)
        promoting.join(30)
    finally:
        standby.stop()
    assert response.status_code == 200, response.get_json()
    assert WAKES_AFTER <= waited < BUDGET


@pytest.mark.parametrize("budget", [1.0, 2.5])
def test_a_database_that_stays_down_is_a_503_only_after_the_connect_budget(budget, make_app):
    url = f"postgresql://u:p@127.0.0.1:{free_port()}/db?sslmode=disable"  # nothing listens
    client = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT=str(budget)).test_client()
    response, waited = timed_get(client)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert budget - 0.3 <= waited < budget + 0.5
