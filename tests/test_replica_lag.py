"""DB_MAX_REPLICA_LAG against a real primary and its real streaming hot standby
(pg_basebackup -R), on DATABASE_URL=standby,primary with prefer-standby: replay paused while
the primary is written, replay resumed, an idle primary, and the WAL receiver stopped.

A writer inserts a row every 50 ms and notes when each commit returned. The staleness of a
response is how long before the request the first row it lacks had been committed (0 when it
lacks none): the bound is DB_MAX_REPLICA_LAG plus the check interval (lib/postgres/replicas.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from devtools import seed
from lib.postgres.replicas import CHECK_SQL, FAILBACK_S
from tests import report
from tests.connections import function_connections
from tests.test_connect_url import replicas  # noqa: F401 - the primary and its standby

MAX_LAG, CHECK_S = 2.0, 0.5  # DB_MAX_REPLICA_LAG=2: checks every 0.5 s
SLACK_S = 0.3  # a request's own time, and the writer's


class Writer:
    """Inserts a user every `every` seconds on the primary while running; `committed[id]` is
    when its commit returned."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self.conn = seed.connect(url)
        self.every, self.committed = every, {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _write(self) -> None:
        cursor = self.conn.cursor()
        for _ in range(2000):  # at most 100 s
            if self._stop.is_set():
                return
            cursor.execute(
                "INSERT INTO users (email, name) VALUES ('w' || clock_timestamp(), 'w') "
                "RETURNING id"
            )
            self.committed[cursor.fetchone()[0]] = time.monotonic()
            time.sleep(self.every)

    def staleness(self, started: float, newest_id: int) -> float:
        """How long before `started` the first row missing from an answer was committed."""
        missing = [t for i, t in list(self.committed.items()) if i > newest_id and t < started]
        return max(started - min(missing), 0.0) if missing else 0.0


@pytest.fixture
def lagged(replicas, make_app) -> Iterator[tuple[object, Writer, object, object, str]]:  # noqa: F811
    primary, standby = replicas
    hosts = f"127.0.0.1:{standby.port},127.0.0.1:{primary.port}"
    url = f"postgresql://postgres:postgres@{hosts}/postgres?sslmode=disable"
    client = make_app(
        DATABASE_URL=f"{url}&target_session_attrs=prefer-standby",
        DB_MAX_REPLICA_LAG=str(MAX_LAG),
    ).test_client()
    writer = Writer(primary.url())
    on_standby = seed.connect(standby.url())
    cursor = on_standby.cursor()
    cursor.execute("SHOW primary_conninfo")  # pg_basebackup -R's, in postgresql.auto.conf
    [(conninfo,)] = cursor.fetchall()
    yield client, writer, primary, on_standby, conninfo
    writer.stop()
    cursor.execute("SELECT pg_wal_replay_resume()")
    set_conninfo(cursor, conninfo)
    on_standby.close()
    writer.conn.close()


def set_conninfo(cursor, conninfo: str) -> None:
    """Point the standby's WAL receiver at `conninfo` (it restarts on reload)."""
    cursor.execute("ALTER SYSTEM SET primary_conninfo = '" + conninfo.replace("'", "''") + "'")
    cursor.execute("SELECT pg_reload_conf()")


def read(client) -> tuple[float, int]:
    """GET / once: (when the request started, the newest user id in the answer)."""
    started = time.monotonic()
    response = client.get("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    return started, max(user["id"] for user in response.get_json()["users"])


def on(server_url: str) -> int:
    conn = seed.connect(server_url)
    try:
        return function_connections(conn)
    finally:
        conn.close()


def read_for(client, writer: Writer, seconds: float) -> float:
    """Read for `seconds`, 20 ms apart: the stalest answer's staleness."""
    stalest, until = 0.0, time.monotonic() + seconds
    while time.monotonic() < until:
        stalest = max(stalest, writer.staleness(*read(client)))
        time.sleep(0.02)
    return stalest


def until_on_standby(client, primary, standby_url: str, seconds: float) -> float:
    """Read until every connection of the function is on the standby; how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        read(client)
        if on(primary.url()) == 0 and on(standby_url) >= 1:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"still on the primary after {seconds} s")


@pytest.mark.slow
def test_paused_replay_is_passed_over_within_the_bound_and_taken_back(lagged, replicas):  # noqa: F811
    client, writer, primary, on_standby, _ = lagged
    standby_url = replicas[1].url()
    writer.start()
    assert read_for(client, writer, 1.0) <= CHECK_S + SLACK_S  # streaming: on the standby
    assert on(primary.url()) == 0
    on_standby.cursor().execute("SELECT pg_wal_replay_pause()")
    stalest = read_for(client, writer, MAX_LAG * 3)  # paused three times the bound
    assert stalest <= MAX_LAG + CHECK_S + SLACK_S, stalest
    assert on(primary.url()) >= 1  # the reads moved to the primary
    health = client.get("/healthz").get_json()
    assert "replay paused" in str(health), health
    on_standby.cursor().execute("SELECT pg_wal_replay_resume()")
    back = until_on_standby(client, primary, standby_url, FAILBACK_S + CHECK_S + 3)
    assert back <= FAILBACK_S + CHECK_S + 1.5, back  # the primary's connections retired
    report.figure(
        f"replica lag (DATABASE_URL): replay paused {MAX_LAG * 3:g} s, bound {MAX_LAG:g} s + "
        f"check {CHECK_S:g} s: stalest answer {stalest:.2f} s; back on the standby {back:.1f} s "
        "after the resume"
    )


@pytest.mark.slow
def test_an_idle_primary_is_not_lag(lagged, replicas):  # noqa: F811
    client, writer, primary, _, _ = lagged
    writer.start()
    read_for(client, writer, 0.5)
    writer.stop()
    time.sleep(0.3)
    assert read_for(client, writer, MAX_LAG * 2) == 0.0  # idle twice the bound
    assert on(primary.url()) == 0
    assert client.get("/healthz").get_json()["database"]["replicas"]["passed_over"] == {}


@pytest.mark.slow
def test_a_stopped_wal_receiver_is_lag_once_it_outlasts_the_bound(lagged, replicas):  # noqa: F811
    """The standby's primary_conninfo pointed at nothing: its receiver stops and cannot start
    again, while replay shows everything received. Lag counts from the last check that saw the
    receiver running; past the bound, reads go to the primary; reconnected, they come back."""
    client, writer, primary, on_standby, conninfo = lagged
    standby_url = replicas[1].url()
    writer.start()
    read_for(client, writer, 0.5)
    cursor = on_standby.cursor()
    set_conninfo(cursor, "host=127.0.0.1 port=1 user=postgres")
    stalest = read_for(client, writer, MAX_LAG * 3)
    assert stalest <= MAX_LAG + CHECK_S + SLACK_S, stalest
    assert on(primary.url()) >= 1
    set_conninfo(cursor, conninfo)
    # The startup process retries the receiver every wal_retrieve_retry_interval (5 s).
    until_on_standby(client, primary, standby_url, FAILBACK_S + 5 + CHECK_S + 3)


@pytest.mark.slow
def test_what_a_role_without_pg_read_all_stats_sees(replicas):  # noqa: F811
    """The check as the least-privilege reader: the receiver's presence, not its status."""
    primary, standby = replicas
    owner = seed.connect(primary.url())
    seed.create_reader(owner, "reader-pw")
    owner.close()
    deadline = time.monotonic() + 10
    while True:  # until the role has replayed on the standby
        try:
            conn = seed.connect(standby.url("users_reader", "reader-pw"))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    cursor = conn.cursor()
    cursor.execute(CHECK_SQL)
    received, replayed, pause, receiver, status, _ = cursor.fetchone()
    conn.close()
    assert received is not None and replayed is not None and pause == "not paused"
    assert receiver is True and status is None  # present; its details need pg_read_all_stats
