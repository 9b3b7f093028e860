"""Chaos: each fault injected under concurrent load against the real function (gunicorn).

For every fault: no request takes longer than the configured budgets add up to, every
failure is a 503/504 JSON answer, the function recovers by itself within 2 s, no connection
leaks, the worker process is never restarted, and the password never leaks. A summary table
is printed at the end of the run (docs/operations.md, "Faults").
"""

from __future__ import annotations

import signal
import time

import pytest

from devtools import seed
from tests.conftest import slow_users
from tests.connections import (
    function_backends,
    function_connections,
    terminate_function_connections,
    wait_for_no_function_connections,
)
from tests.load import Load
from tests.relay import Relay
from tests.report import CHAOS

pytestmark = pytest.mark.slow

MARKER = "PW-MARKER-7c41e9"
POOL_TIMEOUT, CONNECT_TIMEOUT, STATEMENT_TIMEOUT = 1.0, 1.0, 0.5
READ_TIMEOUT = (
    STATEMENT_TIMEOUT + CONNECT_TIMEOUT
)  # lib/postgres/database.py: the socket read timeout
# Worst case for one request: wait for the pool, then a dead pooled connection (a read
# timing out) and one retry on a new connection that also times out.
BUDGET = POOL_TIMEOUT + 2 * (CONNECT_TIMEOUT + READ_TIMEOUT) + 0.5
RECOVERY = 2.0


@pytest.fixture
def chaos(admin, postgres, serve):
    """Seeded table, the reader role with a marked password, and a way to start the function."""
    seed.seed_users(admin, 50, progress=False)
    seed.create_reader(admin, MARKER)
    started = []

    def start(port: int | None = None, **env: str):
        """The function, on the server directly or through the relay on 127.0.0.1:`port`."""
        where = {"host": "127.0.0.1", "port": port} if port else {}
        settings = {
            "DATABASE_URL": postgres.url(seed.READER_ROLE, MARKER, **where),
            "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
            "DB_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "DB_STATEMENT_TIMEOUT_MS": str(int(STATEMENT_TIMEOUT * 1000)),
            "THREADS": "5",  # = pool size, as cloudbuild.yaml deploys it
        }
        served = serve(**{**settings, **env})
        served.worker = served.worker_pid()
        started.append(served)
        return served

    yield start
    for served in started:
        assert MARKER not in served.output(), "password in the function's log"


def check(
    name: str,
    served,
    load: Load,
    admin,
    restored_at: float | None = None,
    allowed=(200, 503, 504),
    budget: float = BUDGET,
    pool_size: int = 5,
) -> dict:
    answers = load.answers
    assert answers, "no request was made"
    statuses: dict[int, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
        assert a.status in allowed, f"{name}: status {a.status} ({a.body[:200]!r})"
        assert a.json_body, f"{name}: a non-JSON answer ({a.status})"
        assert MARKER.encode() not in a.body
    slowest = max(a.seconds for a in answers)
    assert slowest <= budget, f"{name}: a request took {slowest:.2f} s > budget {budget:.2f} s"
    recovery = None
    if restored_at is not None:
        failures = [a for a in answers if a.status != 200 and a.started >= restored_at]
        recovery = max((a.started + a.seconds - restored_at for a in failures), default=0.0)
        assert recovery <= RECOVERY, f"{name}: failures {recovery:.2f} s after the fault ended"
        late = [a for a in answers if a.started >= restored_at + RECOVERY]
        assert late and all(a.status == 200 for a in late), f"{name}: not fully recovered"
    time.sleep(0.2)
    after = function_connections(admin)
    assert after <= pool_size, f"{name}: {after} connections left (pool {pool_size})"
    assert served.worker_pid() == served.worker, "the worker process was restarted"
    row = {
        "fault": name,
        "requests": len(answers),
        "outcomes": ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        "max latency s": f"{slowest:.2f}",
        "recovery s": "-" if recovery is None else f"{recovery:.2f}",
        "connections after": after,
    }
    CHAOS.append(row)
    return row


def fresh_admin(postgres):
    return seed.connect(postgres.admin_url)


def test_database_restart_under_load(chaos, admin, postgres):
    if postgres.embedded is None:
        pytest.skip("needs the embedded server, which tests may restart")
    served = chaos()
    with Load(served.base) as load:
        time.sleep(1)
        postgres.embedded.stop("fast")
        time.sleep(2)
        postgres.embedded.start()
        restored = time.monotonic()
        time.sleep(RECOVERY + 1.5)
    conn = fresh_admin(postgres)
    check("database restart (2 s down)", served, load, conn, restored)
    conn.close()


def test_database_down_at_cold_start(chaos, admin, postgres):
    if postgres.embedded is None:
        pytest.skip("needs the embedded server, which tests may restart")
    postgres.embedded.stop("fast")
    try:
        served = chaos()
        with Load(served.base) as load:
            time.sleep(1.5)
            down = list(load.answers)
            postgres.embedded.start()
            restored = time.monotonic()
            time.sleep(RECOVERY + 1.5)
    finally:
        if not postgres.embedded.running():
            postgres.embedded.start()
    assert down and all(a.status == 503 for a in down)
    assert max(a.seconds for a in down) < CONNECT_TIMEOUT + 0.5  # refused: answered at once
    conn = fresh_admin(postgres)
    check("database down at cold start", served, load, conn, restored)
    conn.close()


def test_connections_killed_by_the_server_are_invisible(chaos, admin):
    served = chaos()
    with Load(served.base) as load:
        for _ in range(6):
            time.sleep(0.4)
            terminate_function_connections(admin)
        time.sleep(0.5)
    check("pg_terminate_backend x6", served, load, admin, allowed=(200,))


def test_slow_queries_end_in_504_and_connections_stay_healthy(chaos, admin):
    served = chaos()
    slow_users(admin, "pg_sleep(1)")
    cursor = admin.cursor()
    with Load(served.base, clients=4) as load:
        time.sleep(2)
    backends = function_backends(admin)
    assert {a.status for a in load.answers} == {504}
    cursor.execute("DROP VIEW users")
    cursor.execute("ALTER TABLE real_users RENAME TO users")
    with Load(served.base, clients=4) as after:
        time.sleep(1)
    assert {a.status for a in after.answers} == {200}
    assert function_backends(admin) == backends  # the same connections served on: none dropped
    load.answers += after.answers
    check("slow queries (statement_timeout)", served, load, admin, allowed=(200, 504))


@pytest.fixture
def proxy(postgres):
    p = Relay((postgres.host, postgres.port))
    yield p
    p.close()


def test_network_latency(chaos, admin, proxy):
    served = chaos(port=proxy.port)
    proxy.set("delay", 0.05)
    with Load(served.base) as load:
        time.sleep(2)
    proxy.set("pass")
    check("latency +50 ms per packet", served, load, admin, allowed=(200,))


def test_network_black_hole(chaos, admin, proxy):
    served = chaos(port=proxy.port)
    with Load(served.base) as load:
        time.sleep(1)
        proxy.set("blackhole")
        time.sleep(4)
        proxy.set("reset")  # what a network coming back does to stuck connections
        proxy.set("pass")
        restored = time.monotonic()
        time.sleep(RECOVERY + 1.5)
    check("black hole for 4 s", served, load, admin, restored)


def test_network_resets(chaos, admin, proxy):
    served = chaos(port=proxy.port)
    with Load(served.base) as load:
        for _ in range(4):
            time.sleep(0.5)
            proxy.set("reset")
            proxy.set("pass")
        restored = time.monotonic()
        time.sleep(RECOVERY + 1)
    check("connection resets x4", served, load, admin, restored)


def test_overload_is_shed_with_fast_503s(chaos, admin):
    served = chaos(DB_POOL_SIZE="2", DB_MAX_WAITING="2", THREADS="16")
    slow_users(admin, "pg_sleep(0.004)")  # x 50 rows: 0.2 s a request
    with Load(served.base, clients=16) as load:
        time.sleep(3)
    shed = [a for a in load.answers if a.status == 503]
    assert shed and all(b"pool_exhausted" in a.body for a in shed)
    assert max(a.seconds for a in shed) < POOL_TIMEOUT + 0.5
    assert any(a.status == 200 for a in load.answers)
    check("overload: 16 clients, pool 2 + 2 waiting", served, load, admin, pool_size=2)


def test_idle_connections_are_closed(chaos, admin):
    served = chaos(DB_IDLE_TIMEOUT="1")
    with Load(served.base) as load:
        time.sleep(1)
    assert function_connections(admin) >= 1
    # idle_session_timeout = 1 s + 2 s margin
    assert wait_for_no_function_connections(admin, 6) == 0, "idle connections were not closed"
    with Load(served.base) as again:
        time.sleep(1)
    assert {a.status for a in again.answers} == {200}  # stale pooled connections never surfaced
    load.answers += again.answers
    check("idle 1 s: closed, then served", served, load, admin, allowed=(200,))


def test_shutdown_completes_in_flight_requests_and_closes_connections(chaos, admin):
    served = chaos()
    slow_users(admin, "(SELECT pg_sleep(CASE WHEN r.id = 1 THEN 0.4 ELSE 0 END))")  # 0.4 s each
    with Load(served.base, clients=4) as load:
        time.sleep(0.6)
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=30)
        exited = time.monotonic()
    in_flight = [a for a in load.answers if a.started < exited - 0.45 and a.status != 0]
    assert in_flight and all(a.status == 200 for a in in_flight)
    left = wait_for_no_function_connections(admin, exited + 1.0 - time.monotonic())
    assert left == 0, f"{left} connections still open 1 s after shutdown"
    CHAOS.append(
        {
            "fault": "SIGTERM with requests in flight",
            "requests": len(in_flight),
            "outcomes": f"200: {len(in_flight)} (in flight)",
            "max latency s": f"{max(a.seconds for a in in_flight):.2f}",
            "recovery s": "-",
            "connections after": f"{left} (1 s after exit)",
        }
    )
