"""Read replicas through the Cloud SQL connector: INSTANCE_CONNECTION_NAME names a primary and
its replicas, chosen as libpq chooses among a URL's hosts (lib/connectors/instances.py).

The real Connector, google-auth and aiohttp run against tests/google_fake.py with three
instances: `main` relays to a real primary, `replica-a` and `replica-b` to its real streaming
hot standby (pg_basebackup -R). Which server a session landed on is PostgreSQL's own answer
(in_hot_standby), and which instance carried it is the fake proxy's count of tunnels."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from devtools import seed
from lib import config
from lib.errors import ConfigError
from tests import report
from tests.google_fake import GoogleFake
from tests.test_connect_url import replicas  # noqa: F401 - the primary and its standby
from tests.test_replica_lag import CHECK_S, MAX_LAG, SLACK_S, Writer, read

MAIN = "my-proj:us-central1:main"
REPLICA_A = "my-proj:us-central1:replica-a"
REPLICA_B = "my-proj:us-central1:replica-b"


@pytest.fixture
def google(replicas, tmp_path) -> Iterator[GoogleFake]:  # noqa: F811
    primary, standby = replicas
    fake = GoogleFake(tmp_path, ("127.0.0.1", primary.port), instance=MAIN)
    for name in (REPLICA_A, REPLICA_B):
        fake.add_instance(name, ("127.0.0.1", standby.port))
    yield fake
    fake.close()


def env(replicas, google: GoogleFake, *names: str, **extra: str) -> dict[str, str]:  # noqa: F811
    """Every checkout opens a new connection (DB_IDLE_TIMEOUT of 1 ms): each request is a choice."""
    url = make_url(replicas[0].url())
    return google.env(
        INSTANCE_CONNECTION_NAME=",".join(names or (MAIN, REPLICA_A, REPLICA_B)),
        DB_USER=url.username,
        DB_PASS=url.password,
        DB_NAME=url.database,
        DB_IDLE_TIMEOUT="0.001",
        **extra,
    )


def served_by(client, count: int) -> list[str]:
    """GET / `count` times, 20 ms apart: each answer's `in_hot_standby` as the server said it."""
    import main  # the module make_app loaded

    standby = []
    for _ in range(count):
        response = client.get("/?limit=1")
        assert response.status_code == 200, response.get_data(as_text=True)
        conn = main.DB.checkout()
        try:
            standby.append(main.DB.fetch(conn, "SHOW in_hot_standby")[0][0])
        finally:
            main.DB.release(conn)
        time.sleep(0.02)
    return standby


def most_attempts(seconds: float) -> int:
    """Attempts on a failing instance in `seconds`: at 0 s, then after 1 s, 2 s, 4 s, ..."""
    attempts, due = 1, 1.0
    while due <= seconds:
        attempts, due = attempts + 1, due * 2 + 1
    return attempts


def tunnels(google: GoogleFake, instance: str) -> int:
    return sum(google.proxies[instance].tunnels.values())


@pytest.mark.slow
def test_reads_spread_across_the_replicas_and_each_is_refreshed_once(replicas, make_app, google):  # noqa: F811
    client = make_app(**env(replicas, google)).test_client()
    assert set(served_by(client, 20)) == {"on"}
    a, b = tunnels(google, REPLICA_A), tunnels(google, REPLICA_B)
    assert a >= 5 and b >= 5, (a, b)  # random spreading: 40 connections, P(<5 of 40) ~ 1e-7
    assert tunnels(google, MAIN) <= 1  # dialled at most once, to learn it is the primary
    calls = google.api.calls_by_instance
    for name in ("replica-a", "replica-b"):  # one certificate each, on the first connection
        assert calls[name, "connectSettings"] == calls[name, "generateEphemeralCert"] == 1
    assert calls["main", "connectSettings"] == tunnels(google, MAIN)  # lazy: only if dialled


@pytest.mark.slow
def test_a_replica_down_costs_one_attempt_per_interval_and_no_error(
    replicas,  # noqa: F811
    make_app,
    google,
    capfd,
):
    google.proxies[REPLICA_B].close()  # nothing listens on its port 3307 any more
    client = make_app(**env(replicas, google)).test_client()
    started = time.monotonic()
    assert set(served_by(client, 30)) == {"on"}  # ~1 s of requests, every one served
    elapsed = time.monotonic() - started
    attempts = google.api.calls_by_instance["replica-b", "connectSettings"]
    assert 1 <= attempts <= most_attempts(elapsed)
    assert tunnels(google, REPLICA_A) >= 29
    assert capfd.readouterr().out.count("replica-b passed over") == 1  # once, not per attempt


@pytest.mark.slow
def test_a_slow_replica_costs_one_bounded_attempt(replicas, make_app, google):  # noqa: F811
    """replica-b takes 10 s to log in; DB_CONNECT_TIMEOUT=3: an attempt on it is cut at its
    share of the budget (a third, with three instances left to try), then replica-a serves,
    and replica-b rests for its back-off interval."""
    client = make_app(**env(replicas, google, DB_CONNECT_TIMEOUT="3")).test_client()
    for _ in range(40):  # warm: the connector imported, both replicas' certificates issued
        assert client.get("/?limit=1").status_code == 200
        if tunnels(google, REPLICA_A) and tunnels(google, REPLICA_B):
            break
    google.proxies[REPLICA_B].login_delay_s = 10
    tried_before = tunnels(google, REPLICA_B)
    slowest, begin = 0.0, time.monotonic()
    for _ in range(300):  # until replica-b was tried (it may be resting), for at most 8 s
        started = time.monotonic()
        assert client.get("/?limit=1").status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        if started - begin > 1.5 and tunnels(google, REPLICA_B) > tried_before:
            break
        if started - begin > 8:
            break
        time.sleep(0.02)
    slow_attempts = tunnels(google, REPLICA_B) - tried_before
    assert slowest < 3
    assert 1 <= slow_attempts <= most_attempts(time.monotonic() - begin)


@pytest.mark.slow
def test_the_primary_down_leaves_reads_on_the_replicas(replicas, make_app, google):  # noqa: F811
    google.proxies[MAIN].close()
    client = make_app(**env(replicas, google)).test_client()
    assert set(served_by(client, 10)) == {"on"}


@pytest.mark.slow
def test_every_replica_down_falls_back_to_the_primary(replicas, make_app, google):  # noqa: F811
    google.proxies[REPLICA_A].close()
    google.proxies[REPLICA_B].close()
    client = make_app(**env(replicas, google)).test_client()
    assert set(served_by(client, 10)) == {"off"}


@pytest.mark.slow
def test_primary_only_never_reads_a_replica(replicas, make_app, google):  # noqa: F811
    client = make_app(**env(replicas, google, DB_TARGET_SESSION_ATTRS="read-write")).test_client()
    assert set(served_by(client, 10)) == {"off"}
    google.proxies[MAIN].close()
    client = make_app(**env(replicas, google, DB_TARGET_SESSION_ATTRS="primary")).test_client()
    response = client.get("/")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"


CLOUD_ENV = {"DB_NAME": "d", "DB_USER": "u", "DB_PASS": "x"}


@pytest.mark.parametrize(
    "names, attrs, instances, wanted",
    [
        ("p:r:main", "", ("p:r:main",), "prefer-standby"),
        (
            "p:r:main, p:r:replica-1,p:r:replica-2",
            "",
            ("p:r:main", "p:r:replica-1", "p:r:replica-2"),
            "prefer-standby",
        ),
        ("p:r:main,p:r:r1", "read-write", ("p:r:main", "p:r:r1"), "primary"),
        ("p:r:main,p:r:r1", "READ-ONLY", ("p:r:main", "p:r:r1"), "any"),
        ("p:r:main,p:r:r1", "standby", ("p:r:main", "p:r:r1"), "standby"),
    ],
)
def test_several_instance_names_and_the_choice(names, attrs, instances, wanted):
    settings = config.load(
        {**CLOUD_ENV, "INSTANCE_CONNECTION_NAME": names, "DB_TARGET_SESSION_ATTRS": attrs}
    )
    assert settings.cloud_sql.instances == instances
    assert settings.cloud_sql.target_session_attrs == wanted


@pytest.mark.parametrize(
    "names, attrs, variable, problem",
    [
        ("p:r:main,p:r:main", "", "INSTANCE_CONNECTION_NAME", "twice"),
        ("p:r:main,,p:r:r1", "", "INSTANCE_CONNECTION_NAME", "'' must look like"),
        ("p:r:main,replica", "", "INSTANCE_CONNECTION_NAME", "'replica' must look like"),
        ("p:r:main", "prefer-primary", "DB_TARGET_SESSION_ATTRS", "not one of"),
    ],
)
def test_bad_instance_lists_name_the_setting(names, attrs, variable, problem):
    env = {**CLOUD_ENV, "INSTANCE_CONNECTION_NAME": names, "DB_TARGET_SESSION_ATTRS": attrs}
    with pytest.raises(ConfigError, match=problem) as caught:
        config.load(env)
    assert caught.value.variable == variable


@pytest.mark.slow
def test_lagging_replicas_are_passed_over_within_the_bound_and_taken_back(
    replicas,  # noqa: F811
    make_app,
    google,
):
    """Replay paused on the standby behind both replicas while the primary is written: past
    DB_MAX_REPLICA_LAG, reads go to the primary, no answer older than the bound plus the
    check interval; resumed, they return to the replicas."""
    primary, standby = replicas
    client = make_app(**env(replicas, google, DB_MAX_REPLICA_LAG=str(MAX_LAG))).test_client()
    assert set(served_by(client, 5)) == {"on"}
    writer, on_standby = Writer(primary.url()), seed.connect(standby.url())
    try:
        writer.start()
        on_standby.cursor().execute("SELECT pg_wal_replay_pause()")
        stalest, until = 0.0, time.monotonic() + MAX_LAG * 3
        while time.monotonic() < until:
            stalest = max(stalest, writer.staleness(*read(client)))
            time.sleep(0.02)
        assert stalest <= MAX_LAG + CHECK_S + SLACK_S, stalest
        assert set(served_by(client, 3)) == {"off"}
        passed = client.get("/healthz").get_json()["database"]["replicas"]["passed_over"]
        assert set(passed) == {REPLICA_A, REPLICA_B}, passed
        on_standby.cursor().execute("SELECT pg_wal_replay_resume()")
        time.sleep(CHECK_S)
        assert served_by(client, 10)[-5:] == ["on"] * 5
    finally:
        on_standby.cursor().execute("SELECT pg_wal_replay_resume()")
        on_standby.close()
        writer.stop()
        writer.conn.close()
    report.figure(
        f"replica lag (Cloud SQL connector): stalest answer {stalest:.2f} s, bound "
        f"{MAX_LAG:g} s + check {CHECK_S:g} s"
    )
