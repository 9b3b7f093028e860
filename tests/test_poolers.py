"""Behind PgBouncer as hosted providers run it, with no flag: the function finds out, serves,
leaves no setting of its own on shared server connections, and says which protections the
role lacks. Debian's PgBouncer 1.x refuses `statement_timeout` & co as startup parameters
(08P01) unless told to ignore them, and then drops them silently."""

from __future__ import annotations

import json
import statistics
import time

import pytest

from devtools import seed
from lib.config import load
from lib.connect_url import connect
from lib.session import Session
from tests import processes
from tests.load import Load, get
from tests.pgbouncer import PgBouncer
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
