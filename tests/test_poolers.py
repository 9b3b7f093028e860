"""Behind PgBouncer as hosted providers run it, with no flag: the function finds out, serves,
leaves no setting of its own on shared server connections, and says which protections the
role lacks. Debian's PgBouncer 1.x refuses `statement_timeout` & co as startup parameters
(08P01) unless told to ignore them, and then drops them silently."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from devtools import seed
from lib.config import load
from lib.database_url.connect import connect
from lib.postgres.session import Session
from tests import processes
from tests.load import Load, get
from tests.pgbouncer import PgBouncer
from tests.relay import Relay
from tests.report import figure

ROLE, PASSWORD = "pooled_reader", "pooled-pw"
OURS = (
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "default_transaction_read_only",
    "idle_session_timeout",
)
IGNORE = ",".join((*OURS, "extra_float_digits"))
# Debian's defaults are session pooling with 20 server connections a pool; hosted poolers run
# transaction pooling. Two server connections make every client share them.
VARIANTS = {
    "transaction pooling": {"pool_mode": "transaction", "default_pool_size": "2"},
    "session pooling, Debian's defaults": {"pool_mode": "session"},
    "transaction pooling, ignore_startup_parameters": {
        "pool_mode": "transaction",
        "default_pool_size": "2",
        "ignore_startup_parameters": IGNORE,
    },
}


@pytest.fixture
def pooled_role(admin):
    """A reader role with no settings of its own: what a hosted provider's user has."""
    seed.seed_users(admin, 20, progress=False)
    cursor = admin.cursor()
    cursor.execute(f"DROP ROLE IF EXISTS {ROLE}")
    cursor.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    cursor.execute(f"GRANT SELECT ON users TO {ROLE}")
    yield
    cursor.execute(f"DROP OWNED BY {ROLE}")
    cursor.execute(f"DROP ROLE {ROLE}")


def settings_seen(url: str) -> dict[str, str]:
    """What another client of the pooler finds on the server connection it is handed."""
    conn = seed.connect(url)
    cursor = conn.cursor()
    cursor.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        f"({', '.join(repr(name) for name in OURS)})"
    )
    seen = dict(cursor.fetchall())
    conn.close()
    return seen


def log_entries(path) -> list[dict]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_behind_pgbouncer_with_no_flag(postgres, pooled_role, serve, variant):
    bouncer = PgBouncer(postgres.port, ROLE, PASSWORD, **VARIANTS[variant])
    try:
        baseline = settings_seen(bouncer.url())  # before the function ever connected
        # FLEET_MAX_INSTANCES would make a budget check warn: it must not run through a pooler.
        served = serve(DATABASE_URL=bouncer.url(), THREADS="5", FLEET_MAX_INSTANCES="1000")
        with Load(served.base, clients=6) as load:
            time.sleep(2)
        statuses = {a.status for a in load.answers}
        seen = [settings_seen(bouncer.url()) for _ in range(4)]
        health = json.loads(get(f"{served.base}/healthz")[1])
        # Stopped: its server connections go back to the pooler, for others.
        processes.stop([served], timeout=15)
        seen += [settings_seen(bouncer.url()) for _ in range(4)]
    finally:
        bouncer.stop()
    assert statuses == {200}, statuses
    assert len(load.answers) > 10
    assert all(s == baseline for s in seen), (baseline, seen)  # nothing of ours leaked
    assert baseline["statement_timeout"] == "0"  # the role really has no protection
    entries = log_entries(served.log)
    warnings = [e["message"] for e in entries if e.get("severity") == "WARNING"]
    unprotected = [m for m in warnings if m.startswith("unprotected sessions")]
    assert len(unprotected) == 1, warnings
    for name in ("statement_timeout", "idle_in_transaction_session_timeout"):
        assert name in unprotected[0]
        assert f'ALTER ROLE "{ROLE}" SET {name}' in unprotected[0]
    assert "default_transaction_read_only" in unprotected[0]
    assert not any("budget" in m for m in warnings)
    switched = [m for m in warnings if "pooler" in m]
    assert len(switched) == 1, warnings
    assert health["database"]["transaction_pooler"]
    assert health["database"]["session"]["statement_timeout"] == "0"


@pytest.mark.slow
def test_the_fallback_costs_one_refused_connect_at_cold_start(postgres, pooled_role):
    """A process's first connection through a pooler: refused then reconnected (auto) vs sent
    no session settings from the start (true). Figures only: interleaved, medians."""
    bouncer = PgBouncer(postgres.port, ROLE, PASSWORD, pool_mode="transaction")
    timings: dict[str, list[float]] = {"auto": [], "true": []}
    try:
        for _ in range(15):
            for flag in timings:
                settings = load({"DATABASE_URL": bouncer.url(), "DB_TRANSACTION_POOLER": flag})
                session = Session(settings)
                started = time.perf_counter()
                conn = connect(settings.url, timeout=5, session=session)
                timings[flag].append((time.perf_counter() - started) * 1000)
                conn.close()
                assert session.pooler
    finally:
        bouncer.stop()
    auto, known = statistics.median(timings["auto"]), statistics.median(timings["true"])
    figure(
        f"pooler fallback at cold start: first connection {auto:.2f} ms (auto: refused, then "
        f"reconnected) vs {known:.2f} ms (DB_TRANSACTION_POOLER=true): +{auto - known:.2f} ms"
    )


@pytest.mark.slow
def test_a_refused_url_option_is_a_configuration_error(postgres, pooled_role, make_app):
    bouncer = PgBouncer(postgres.port, ROLE, PASSWORD, pool_mode="transaction")
    try:
        url = bouncer.url("sslmode=disable&options=-c%20search_path%3Dpublic")
        response = make_app(DATABASE_URL=url).test_client().get("/")
    finally:
        bouncer.stop()
    assert response.status_code == 500
    message = response.get_json()["error"]["message"]
    assert "search_path" in message and "ignore_startup_parameters" in message


@pytest.mark.slow
def test_a_known_pooler_shape_sends_no_session_settings(postgres, pooled_role, make_app):
    """pgbouncer=true (Prisma's flag): no refused connect first, and the role is checked."""
    bouncer = PgBouncer(postgres.port, ROLE, PASSWORD, pool_mode="transaction")
    try:
        client = make_app(DATABASE_URL=bouncer.url("pgbouncer=true")).test_client()
        assert client.get("/").status_code == 200
        health = client.get("/healthz").get_json()
    finally:
        bouncer.stop()
    assert health["database"]["transaction_pooler"] == "pgbouncer=true in DATABASE_URL"


# --- A full, slow or waking pooler is an outage, not a misconfiguration (issue 16) ----------

BUDGET = 2.0  # DB_CONNECT_TIMEOUT of these tests: how long a connect may try


@dataclass
class Reply:
    status: int  # 0: no HTTP answer at all
    retry_after: str | None
    error: dict
    seconds: float


def ask(base: str, timeout: float = 30) -> Reply:
    """One GET on a new connection, with what a client acts on."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"{base}/", timeout=timeout) as response:  # noqa: S310
            status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    except OSError:
        status, headers, body = 0, {}, b"{}"
    error = json.loads(body).get("error") or {} if status != 200 else {}
    return Reply(status, headers.get("Retry-After"), error, time.monotonic() - started)


def burst(base: str, clients: int = 8, seconds: float = 30) -> list[Reply]:
    """`clients` GETs at once, each on its own connection; every reply within `seconds`."""
    replies: list[Reply] = []
    threads = [
        threading.Thread(target=lambda: replies.append(ask(base, seconds)), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    assert len(replies) == clients, f"{clients - len(replies)} GETs got no reply in {seconds} s"
    return replies


def outcomes(replies: list[Reply]) -> dict[int, int]:
    counted: dict[int, int] = {}
    for reply in replies:
        counted[reply.status] = counted.get(reply.status, 0) + 1
    return dict(sorted(counted.items()))


def assert_an_outage(replies: list[Reply]) -> None:
    """200, or a 503 a client retries (Retry-After); never a 500 that says "fix me"."""
    for reply in replies:
        assert reply.status in (200, 503), reply
        if reply.status == 503:
            assert reply.retry_after == "1", reply
            assert reply.error["code"] in ("database_unavailable", "pool_exhausted"), reply


def served_again(base: str, seconds: float = 15, tries: int = 60) -> float | None:
    """Seconds until a GET is answered 200 (None: not within `seconds` and `tries`)."""
    started = time.monotonic()
    for _ in range(tries):
        if ask(base, seconds).status == 200:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            return None
        time.sleep(0.1)
    return None


@pytest.mark.slow
def test_a_full_pgbouncer_is_a_503_and_the_function_serves_again_once_it_has_room(
    postgres, pooled_role, serve
):
    settings = {"pool_mode": "transaction", "max_client_conn": "2"}
    with PgBouncer(postgres.port, ROLE, PASSWORD, **settings) as bouncer:
        others = [seed.connect(bouncer.url()) for _ in range(2)]  # other clients fill it
        try:
            served = serve(
                DATABASE_URL=bouncer.url(),
                THREADS="8",
                DB_CONNECT_TIMEOUT=str(BUDGET),
                DB_POOL_TIMEOUT="1",
            )
            full = burst(served.base)
        finally:
            for conn in others:
                conn.close()
        back_after = served_again(served.base)
        shared = burst(served.base)  # 8 GETs, and room for 2 of the function's 5 connections
    figure(
        f"pgbouncer max_client_conn=2: 8 GETs while others fill it {outcomes(full)}, "
        f"200 again {back_after or 0:.2f} s after they left, then 8 GETs {outcomes(shared)}"
    )
    assert_an_outage(full)
    assert outcomes(full) == {503: 8}
    pooler_busy = [r for r in full if r.error["code"] == "database_unavailable"]
    assert pooler_busy and all("may pass" in r.error["message"] for r in pooler_busy)
    assert back_after is not None, "the function did not serve again once the pooler had room"
    assert_an_outage(shared)
    assert outcomes(shared).get(200)


@pytest.mark.slow
def test_a_slow_pgbouncer_is_a_503_never_a_500(postgres, pooled_role, serve):
    """The pooler reaches its database over a slow network (0.3 s a packet): its server
    logins outlast query_wait_timeout (1 s), so clients that wait for one, at login or with a
    query, are sent away. The pooler is slow, not misconfigured; the function serves again
    once it is fast."""
    settings = {"pool_mode": "transaction", "query_wait_timeout": "1"}
    relay = Relay((postgres.host, postgres.port))
    relay.set("delay", 0.3)
    try:
        with PgBouncer(relay.port, ROLE, PASSWORD, **settings) as bouncer:
            served = serve(
                DATABASE_URL=bouncer.url(),
                THREADS="8",
                DB_CONNECT_TIMEOUT=str(BUDGET),
                DB_POOL_TIMEOUT="1",
                DB_STATEMENT_TIMEOUT_MS="2000",  # bounds each read at 2 + 2 s
                DB_TRANSACTION_POOLER="true",
            )
            slow = burst(served.base)
            relay.set("pass")
            back_after = served_again(served.base)
    finally:
        relay.close()
    figure(
        f"pgbouncer slow to reach its database, query_wait_timeout=1 s: 8 GETs "
        f"{outcomes(slow)}, slowest {max(r.seconds for r in slow):.2f} s"
    )
    assert_an_outage(slow)
    # A wait for the pool, a connect, two reads of at most 2 + 2 s (the session check, the
    # query): and no more.
    assert max(r.seconds for r in slow) < 1 + BUDGET + 2 * (2 + 2) + 1
    assert back_after is not None


@pytest.mark.slow
def test_a_pgbouncer_waking_its_database_serves_within_the_connect_budget(
    postgres, pooled_role, make_app
):
    """PgBouncer answers "client_login_timeout (server down)" while its database is down; the
    function tries again within DB_CONNECT_TIMEOUT and is served once the database is back."""
    relay = Relay((postgres.host, postgres.port))
    relay.set("reset")  # the database is down: every server connection is cut
    settings = {"client_login_timeout": "1", "server_login_retry": "0.2"}
    try:
        with PgBouncer(relay.port, ROLE, PASSWORD, **settings) as bouncer:
            client = make_app(
                DATABASE_URL=bouncer.url(), DB_CONNECT_TIMEOUT="5", DB_TRANSACTION_POOLER="true"
            ).test_client()
            threading.Timer(2.0, relay.set, ("pass",)).start()  # back after 2 s
            started = time.monotonic()
            response = client.get("/")
            waited = time.monotonic() - started
    finally:
        relay.close()
    figure(f"pgbouncer waking its database (2 s): {response.status_code} after {waited:.2f} s")
    assert response.status_code == 200, response.get_json()
    assert 2.0 <= waited < 5.0


@pytest.mark.slow
def test_a_pgbouncer_whose_database_stays_down_is_a_503_after_the_connect_budget(
    postgres, pooled_role, make_app
):
    relay = Relay((postgres.host, postgres.port))
    relay.set("reset")
    settings = {"client_login_timeout": "1", "server_login_retry": "0.2"}
    try:
        with PgBouncer(relay.port, ROLE, PASSWORD, **settings) as bouncer:
            client = make_app(
                DATABASE_URL=bouncer.url(), DB_CONNECT_TIMEOUT=str(BUDGET)
            ).test_client()
            started = time.monotonic()
            response = client.get("/")
            waited = time.monotonic() - started
    finally:
        relay.close()
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert BUDGET - 0.3 <= waited < BUDGET + 1.5  # tried for the whole budget, and no longer
