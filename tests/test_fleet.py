"""Fleet scale: many function instances (separate processes) against a PostgreSQL that allows
only 20 connections, sized by the planner, and behind PgBouncer in transaction mode."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from devtools import seed
from devtools.devdb import EmbeddedPostgres, free_port
from lib.capacity import Plan
from tests.conftest import ROOT, function_command, wait_for_port
from tests.faults import Load
from tests.pgbouncer import PgBouncer
from tests.report import figure

MAX_CONNECTIONS = 20
READER_PASSWORD = "fleet-pw"


def world_readable_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # servers run as `nobody` when the tests run as root
    return path


@pytest.fixture(scope="module")
def small_pg():
    server = EmbeddedPostgres(
        world_readable_dir("pgfleet") / "data", settings=(f"max_connections={MAX_CONNECTIONS}",)
    ).start()
    conn = seed.connect(server.url())
    seed.create_schema(conn)
    seed.seed_users(conn, 100, progress=False)
    seed.create_reader(conn, READER_PASSWORD)
    conn.close()
    yield server
    server.stop("immediate")


class Fleet:
    """N function processes, started in parallel, stopped together."""

    def __init__(self, count: int, env: dict[str, str]) -> None:
        base_env = {k: v for k, v in os.environ.items() if k != "INSTANCE_CONNECTION_NAME"}
        self.ports = [free_port() for _ in range(count)]
        self.processes = [
            subprocess.Popen(
                function_command(port),
                cwd=ROOT,
                env={**base_env, "THREADS": "5", **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in self.ports
        ]
        for port, process in zip(self.ports, self.processes, strict=True):
            wait_for_port(port, 90, process)

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def server_connections(admin_url: str, stop: threading.Event, peak: list[int]) -> None:
    conn = seed.connect(admin_url)
    cursor = conn.cursor()
    while not stop.is_set():
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE usename = %s AND backend_type = 'client backend'",
            (seed.READER_ROLE,),
        )
        peak[0] = max(peak[0], cursor.fetchone()[0])
        stop.wait(0.02)
    conn.close()


def drive(fleet: Fleet, admin_url: str, clients: int, seconds: float) -> tuple[list, int]:
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=server_connections, args=(admin_url, stop, peak))
    watcher.start()
    loads = [Load(f"http://127.0.0.1:{port}", clients=clients) for port in fleet.ports]
    try:
        for load in loads:
            load.__enter__()
        time.sleep(seconds)
    finally:
        for load in loads:
            load.__exit__()
        stop.set()
        watcher.join(timeout=10)
    return [a for load in loads for a in load.answers], peak[0]


def test_planned_fleet_never_meets_too_many_clients(small_pg):
    # The tests' own admin connection and watcher are the "other clients"; no overshoot here
    # (these are processes we start, not Cloud Run instances).
    plan = Plan(MAX_CONNECTIONS, 3, 2, 1, 5, 0, overshoot=1.0)
    url = small_pg.url(seed.READER_ROLE, READER_PASSWORD)
    fleet = Fleet(plan.max_instances, {"DATABASE_URL": url})
    try:
        answers, peak = drive(fleet, small_pg.url(), clients=8, seconds=3)
    finally:
        fleet.stop()
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
    fleet = Fleet(20, {"DATABASE_URL": pgbouncer, "DB_TRANSACTION_POOLER": "true"})
    try:
        answers, peak = drive(fleet, small_pg.url(), clients=3, seconds=4)
    finally:
        fleet.stop()
    statuses: dict[int, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    figure(
        f"pgbouncer: 20 instances x 5 client connections, {len(answers)} requests, "
        f"statuses {statuses}, peak server connections {peak}"
    )
    assert statuses.keys() == {200}
    assert 1 <= peak <= 10
