"""The connect gate (lib/postgres/gate.py) and its waits (lib/postgres/backoff.py), on real
sockets: a port nothing listens on, the test PostgreSQL, and a relay holding its logins."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from lib.database_url import connect as connect_url
from lib.database_url.uri import parse
from lib.errors import ConnectError
from lib.postgres import backoff, connect_time
from lib.postgres.diagnosis import classify
from lib.postgres.gate import Gate, Refusal
from tests.conftest import free_port
from tests.relay import Relay


class Dialled:
    """The attempt the gate makes: a real connect to `url`, counted."""

    def __init__(self, url: str) -> None:
        self.url = parse(url)
        self.count = 0

    def __call__(self, deadline: float, accepted) -> object:
        self.count += 1
        timeout = deadline - time.monotonic()
        return connect_url.connect(self.url, timeout=timeout, accepted=accepted)


def at_once(gate: Gate, attempt: Dialled, n: int, timeout: float = 2.0) -> list[object]:
    """`n` threads asking the gate for a connection together: a connection or the error each."""
    results: list[object] = []
    start = threading.Barrier(n)

    def one() -> None:
        start.wait(5)
        try:
            results.append(gate.connect(attempt, timeout))
        except ConnectError as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


@pytest.fixture
def relay(postgres) -> Iterator[Relay]:
    front = Relay((postgres.host, postgres.port))
    yield front
    front.close()


def test_a_refused_connect_answers_everyone_at_once_until_the_interval_has_passed():
    attempt = Dialled(f"postgresql://u:p@127.0.0.1:{free_port()}/db?sslmode=disable")
    gate = Gate("the database", longest=backoff.FIRST_S)
    started = time.monotonic()
    with pytest.raises(ConnectError) as first:
        gate.connect(attempt, 2.0)
    assert not isinstance(first.value, Refusal)  # its own attempt failed
    assert isinstance(first.value.__cause__, ConnectionRefusedError)
    results = at_once(gate, attempt, 20)
    assert time.monotonic() - started < 0.5
    assert attempt.count == 1
    assert all(isinstance(r, Refusal) for r in results)
    assert all(classify(r).retryable for r in results)  # a 503 with Retry-After
    assert gate.state()["connects"] == "down"
    assert 0.9 < gate.state()["next_attempt_in_s"] <= backoff.FIRST_S * 1.25


def test_requests_arriving_while_the_one_attempt_is_held_wait_for_it_and_are_served(
    postgres, relay
):
    relay.hold(0.5)
    attempt = Dialled(postgres.url(host="127.0.0.1", port=relay.port))
    gate = Gate("the database", longest=backoff.FIRST_S)
    results = at_once(gate, attempt, 5)
    held = [t for t in relay.accepted if t < relay.until]
    for conn in results:
        assert not isinstance(conn, Exception), conn
        conn.close()
    assert len(held) == 1  # the others connected once it was served
    assert attempt.count == 5 and gate.state() == {"connects": "ok"}


def test_the_wait_for_another_requests_attempt_is_counted_as_such(postgres, relay):
    relay.hold(0.4)
    attempt = Dialled(postgres.url(host="127.0.0.1", port=relay.port))
    gate = Gate("the database", longest=backoff.FIRST_S)
    first = threading.Thread(target=lambda: gate.connect(attempt, 2.0).close())
    first.start()
    time.sleep(0.1)
    record = connect_time.begin()
    gate.connect(attempt, 2.0).close()
    first.join(5)
    assert record.wait_ms >= 200  # the first one's login, held
    assert 0 < record.connect_ms < 200  # then its own, once that one was served


def test_a_misconfiguration_is_answered_from_the_failure_without_dialling_again(postgres):
    attempt = Dialled(postgres.url(database="no_such_db"))
    gate = Gate("the database", longest=backoff.FIRST_S)
    with pytest.raises(ConnectError) as first:
        gate.connect(attempt, 2.0)
    assert classify(first.value).code == "configuration_error"
    again = at_once(gate, attempt, 5)
    assert attempt.count == 1
    assert all(classify(r).code == "configuration_error" for r in again)


def test_the_waits():
    assert backoff.next_interval(0, 0, 0) == backoff.FIRST_S
    assert backoff.next_interval(1, 5, 6) == 2 and backoff.next_interval(1, 5, 4) == 1
    assert backoff.next_interval(16, 0, 1) == backoff.MAX_S
    assert backoff.next_interval(1, 0, 1, longest=backoff.FIRST_S) == backoff.FIRST_S
    for attempt, (low, high) in enumerate([(0.05, 0.1), (0.1, 0.2), (0.2, 0.4)]):
        assert low <= backoff.wake_wait(attempt) <= high
    assert 1.0 <= backoff.wake_wait(10) <= backoff.WAKE_MAX_S
    assert all(1.0 <= backoff.jittered(1.0) <= 1.25 for _ in range(100))
