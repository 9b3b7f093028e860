"""One attempt per back-off interval on a failing instance, however many connects run at once
(lib/connectors/instances.py): the connect that claims an instance's retry is the only one to
dial it until the outcome is known. Against the real test PostgreSQL, a port where nothing
listens, and a relay that accepts and never answers."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pg8000.dbapi
import pytest

from lib.connectors.instances import Instances
from tests.conftest import free_port
from tests.relay import Relay
from tests.test_replicas import most_attempts

THREADS = 5


def dialler(postgres, ports: dict[str, int]):
    """The connect function Instances calls: a real login, counted per instance, with how long
    each failed attempt waited (`waits`)."""
    attempts: Counter[str] = Counter()
    waits: list[float] = []
    lock = threading.Lock()

    def connect(name: str, deadline: float) -> pg8000.dbapi.Connection:
        with lock:
            attempts[name] += 1
        began = time.monotonic()
        try:
            return pg8000.dbapi.connect(
                user=postgres.user,
                password=postgres.password,
                database=postgres.database,
                host="127.0.0.1",
                port=ports[name],
                timeout=max(deadline - time.monotonic(), 0.01),
            )
        except Exception:
            waits.append(time.monotonic() - began)
            raise

    connect.waits = waits  # type: ignore[attr-defined]
    return connect, attempts


def hammer(instances: Instances, connect, seconds: float, budget: float) -> list[float]:
    """THREADS threads connecting and closing, 10 ms apart, for `seconds`: each connect's time."""
    took: list[float] = []
    start = threading.Barrier(THREADS)

    def run() -> None:
        start.wait()
        until = time.monotonic() + seconds
        for _ in range(10_000):
            if time.monotonic() > until:
                return
            began = time.monotonic()
            instances.connect(connect, began + budget).close()
            took.append(time.monotonic() - began)
            time.sleep(0.01)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + budget + 10)
    return took


def known_failed(instances: Instances, connect, attempts: Counter[str], name: str) -> float:
    """Connect until `name` was tried once (random order); when that was."""
    for _ in range(100):
        instances.connect(connect, time.monotonic() + 3).close()
        if attempts[name]:
            return time.monotonic()
    raise AssertionError(f"{name} never tried")


@pytest.mark.slow
def test_a_dead_instance_gets_one_attempt_per_interval_from_five_concurrent_connects(postgres):
    connect, attempts = dialler(postgres, {"main": postgres.port, "dead": free_port()})
    instances = Instances(("main", "dead"), "any")
    first = known_failed(instances, connect, attempts, "dead")
    hammer(instances, connect, 7.5, budget=3)
    assert attempts["dead"] <= most_attempts(time.monotonic() - first), attempts


@pytest.mark.slow
def test_a_black_holed_instance_holds_one_request_per_interval_for_its_share(postgres):
    hole = Relay((postgres.host, postgres.port))
    hole.set("blackhole")
    try:
        connect, attempts = dialler(postgres, {"main": postgres.port, "hole": hole.port})
        instances = Instances(("main", "hole"), "any")
        first = known_failed(instances, connect, attempts, "hole")
        hammer(instances, connect, 4.5, budget=2)
        elapsed = time.monotonic() - first
    finally:
        hole.close()
    assert attempts["hole"] <= most_attempts(elapsed), attempts
    # Each request that waited on it is one attempt. pg8000's `timeout` bounds each socket
    # operation, not the login, so a plain pg8000 attempt may outlast its share (half the
    # budget); the connector paths cut it at the share's deadline (test_replicas.py's slow
    # replica). It never outlasts the connect's whole budget.
    assert len(connect.waits) == attempts["hole"]
    assert max(connect.waits) < 3 + 0.3, connect.waits
