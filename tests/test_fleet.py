"""Fleet scale: many function instances (separate processes) against a PostgreSQL that allows
only 20 connections, sized by the planner, and behind PgBouncer in transaction mode."""

from __future__ import annotations

import contextlib
import time

import pytest

from devtools import seed
from devtools.devdb import EmbeddedPostgres
from lib.postgres.capacity import Plan
from tests import processes
from tests.connections import PeakConnections
from tests.load import Answer, Load
from tests.pgbouncer import PgBouncer
from tests.report import figure

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 20
READER_PASSWORD = "fleet-pw"


@pytest.fixture(scope="module")
def small_pg():
    with processes.server_dir("pgfleet") as directory:
        server = EmbeddedPostgres(
            directory / "data", settings=(f"max_connections={MAX_CONNECTIONS}",)
        ).start()
        conn = seed.connect(server.url())
        seed.create_schema(conn)
        seed.seed_users(conn, 100, progress=False)
        seed.create_reader(conn, READER_PASSWORD)
        conn.close()
        yield server
        server.stop("immediate")


@contextlib.contextmanager
def fleet(count: int, env: dict[str, str]):
    """`count` function processes, started in parallel, stopped together."""
    instances = [processes.start_function({"THREADS": "5", **env}) for _ in range(count)]
    try:
        for instance in instances:
            instance.wait_ready(90)
        yield instances
    finally:
        processes.stop(instances, timeout=15)


def drive(instances, admin_url: str, clients: int, seconds: float) -> tuple[list[Answer], int]:
    """`clients` keep-alive clients on each instance for `seconds`: every answer, and the
    peak of the reader role's server connections meanwhile."""
    with (
        PeakConnections(admin_url, role=seed.READER_ROLE, interval=0.02) as connections,
        contextlib.ExitStack() as stack,
    ):
        loads = [stack.enter_context(Load(i.base, clients=clients)) for i in instances]
        time.sleep(seconds)
    return [a for load in loads for a in load.answers], connections.peak


def test_planned_fleet_never_meets_too_many_clients(small_pg):
    # The tests' own admin connection and watcher are the "other clients"; no overshoot here
    # (these are processes we start, not Cloud Run instances).
    plan = Plan(MAX_CONNECTIONS, 3, 2, 1, 5, 0, overshoot=1.0)
    url = small_pg.url(seed.READER_ROLE, READER_PASSWORD)
    with fleet(plan.max_instances, {"DATABASE_URL": url}) as instances:
        answers, peak = drive(instances, small_pg.url(), clients=8, seconds=3)
    statuses = {a.status for a in answers}
    figure(
        f"planned fleet: {plan.max_instances} instances x 5, {len(answers)} requests, "
        f"statuses {sorted(statuses)}, peak server connections {peak} (max_connections "
        f"{MAX_CONNECTIONS}, {plan.available} available)"
    )
    assert statuses == {200}
    assert peak <= plan.max_instances * plan.per_instance <= plan.available


@pytest.fixture
def pgbouncer(small_pg):
    bouncer = PgBouncer(
        small_pg.port,
        seed.READER_ROLE,
        READER_PASSWORD,
        pool_mode="transaction",
        default_pool_size="10",
        max_db_connections="10",
    )
    yield bouncer.url()
    bouncer.stop()


def test_twenty_instances_share_ten_server_connections_through_pgbouncer(small_pg, pgbouncer):
    with fleet(20, {"DATABASE_URL": pgbouncer, "DB_TRANSACTION_POOLER": "true"}) as instances:
        answers, peak = drive(instances, small_pg.url(), clients=3, seconds=4)
    statuses: dict[int, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    figure(
        f"pgbouncer: 20 instances x 5 client connections, {len(answers)} requests, "
        f"statuses {statuses}, peak server connections {peak}"
    )
    assert statuses.keys() == {200}
    assert 1 <= peak <= 10
