"""The Cloud SQL path end to end: the real Connector, google-auth and aiohttp against a fake
of Google's side (tests/google_fake.py: token endpoint, Admin API, server proxy on port 3307),
through to the test PostgreSQL. Nothing of ours or of the connector is replaced (one test
counts Connector constructions with a spy that calls the real constructor)."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.engine import make_url

from devtools import seed
from lib import config
from lib.errors import ConfigError
from tests.conftest import (
    function_connections,
    insert_users,
    run_python,
    terminate_function_connections,
)
from tests.google_fake import GoogleFake
from tests.report import figure

IAM_USER = "fn@my-proj.iam"  # the fake service account's email without .gserviceaccount.com


@pytest.fixture
def google(postgres, tmp_path) -> Iterator[GoogleFake]:
    fake = GoogleFake(tmp_path, (postgres.host, postgres.port))
    yield fake
    fake.close()


def password_env(postgres, google: GoogleFake, **extra: str) -> dict[str, str]:
    url = make_url(postgres.admin_url)
    return google.env(DB_USER=url.username, DB_PASS=url.password, DB_NAME=url.database, **extra)


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.get_json()["error"]["code"]


@pytest.mark.slow
def test_password_login_through_the_connector(admin, make_app, google, postgres):
    insert_users(admin, [("a@example.com", "A", "2024-01-01T00:00:00Z")])
    client = make_app(**password_env(postgres, google)).test_client()
    assert google.api.calls == {}  # nothing built at import
    response = client.get("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["users"][0]["email"] == "a@example.com"
    assert google.api.calls["token"] >= 1  # google-auth signed a JWT the fake verified
    assert google.api.calls["connectSettings"] == 1
    assert google.refreshes() == 1
    assert google.proxy.tunnels == {google.addresses["PRIMARY"]: 1}
    assert google.proxy.iam_logins == []


@pytest.mark.slow
def test_one_connector_per_process_closed_at_exit(admin, make_app, google, postgres, monkeypatch):
    from google.cloud.sql.connector import Connector

    built = []
    real_init = Connector.__init__
    monkeypatch.setattr(
        Connector, "__init__", lambda self, **kw: built.append(kw) or real_init(self, **kw)
    )
    client = make_app(**password_env(postgres, google)).test_client()
    import main  # the module make_app just loaded

    assert built == []  # nothing built at import

    for _ in range(3):
        assert client.get("/").status_code == 200
        terminate_function_connections(admin)  # the next request opens a new connection
    assert sum(google.proxy.tunnels.values()) == 3
    assert len(built) == 1
    assert built[0]["refresh_strategy"] == "lazy"
    assert google.refreshes() == 1  # one certificate served every connection
    main.DB.close()  # what happens at exit
    assert "cloud-sql-connector" not in [t.name for t in threading.enumerate()]


def create_iam_role(admin, google: GoogleFake) -> None:
    """An IAM database user as Cloud SQL creates it; its password is known to the fake only."""
    secret = "iam-" + str(time.time_ns())
    cursor = admin.cursor()
    cursor.execute(
        f'DO $$ BEGIN CREATE ROLE "{IAM_USER}" LOGIN; EXCEPTION WHEN duplicate_object '
        "THEN NULL; END $$"
    )
    cursor.execute(f"ALTER ROLE \"{IAM_USER}\" PASSWORD '{secret}'")
    cursor.execute(f'GRANT SELECT ON users TO "{IAM_USER}"')
    google.iam_passwords[IAM_USER] = secret


@pytest.mark.slow
def test_iam_login_needs_no_password(admin, make_app, google, postgres):
    create_iam_role(admin, google)
    db = make_url(postgres.admin_url).database
    client = make_app(**google.env(DB_IAM_USER=IAM_USER, DB_NAME=db)).test_client()
    assert client.get("/").status_code == 200
    # The certificate was made for a sqlservice.login token of the service account, and the
    # proxy logged that principal in: the function had no password to give.
    assert google.api.login_principals == [google.tokens.email]
    assert google.proxy.iam_logins == [IAM_USER]
    cursor = admin.cursor()
    cursor.execute("SELECT usename FROM pg_stat_activity WHERE application_name = 'users-function'")
    assert [row[0] for row in cursor.fetchall()] == [IAM_USER]


@pytest.mark.slow
def test_the_iam_role_cannot_log_in_with_a_password(admin, make_app, google, postgres):
    create_iam_role(admin, google)
    db = make_url(postgres.admin_url).database
    env = google.env(DB_USER=IAM_USER, DB_PASS="a guess", DB_NAME=db)
    response = make_app(**env).test_client().get("/")
    assert error_of(response) == (500, "configuration_error")
    assert google.proxy.iam_logins == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "ip_type, address", [("public", "PRIMARY"), ("private", "PRIVATE"), ("psc", "PSC")]
)
def test_each_ip_type_reaches_its_own_address(admin, make_app, google, postgres, ip_type, address):
    client = make_app(**password_env(postgres, google, IP_TYPE=ip_type)).test_client()
    assert client.get("/").status_code == 200
    assert google.proxy.tunnels == {google.addresses[address]: 1}


@pytest.mark.slow
def test_killed_backends_are_replaced_without_a_refresh(admin, make_app, google, postgres):
    insert_users(admin, [("a@example.com", "A", "2024-01-01T00:00:00Z")])
    client = make_app(**password_env(postgres, google)).test_client()
    for _ in range(3):
        assert client.get("/").status_code == 200
    assert terminate_function_connections(admin) >= 1
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json()["users"][0]["email"] == "a@example.com"
    assert google.refreshes() == 1


@pytest.mark.slow
def test_lazy_refresh_before_the_certificate_expires(admin, make_app, google, postgres):
    """The lazy strategy refreshes when a connection starts within 4 minutes (the connector's
    buffer) of the certificate's expiry: a certificate of 4 min + 2 s is reused for 2 s,
    then replaced by the next new connection, and the proxy sees the new one."""
    from google.cloud.sql.connector.refresh_utils import _refresh_buffer

    google.api.cert_lifetime_s = _refresh_buffer + 2
    client = make_app(**password_env(postgres, google)).test_client()
    assert client.get("/").status_code == 200
    issued = time.monotonic()
    terminate_function_connections(admin)
    assert client.get("/").status_code == 200
    assert google.refreshes() == 1, "a fresh certificate was refreshed"
    time.sleep(max(0.0, issued + 2.5 - time.monotonic()))
    assert client.get("/").status_code == 200  # on the pooled connection: no refresh needed
    assert google.refreshes() == 1
    terminate_function_connections(admin)
    assert client.get("/").status_code == 200
    assert google.refreshes() == 2
    assert len(google.proxy.client_serials) == 2


@pytest.mark.slow
def test_the_fake_proxy_refuses_foreign_and_expired_certificates(google):
    """What the lazy refresh guards against is real here: OpenSSL in the fake server proxy
    refuses a client certificate past its expiry, or from another CA."""
    import ssl

    from cryptography.x509.oid import ExtendedKeyUsageOID

    from tests.google_fake import CertificateAuthority, pem_files, rsa_key

    def handshake(ca: CertificateAuthority, lifetime_s: float) -> bool:
        key = rsa_key("test client")
        cert = ca.issue(key.public_key(), "client", lifetime_s, ExtendedKeyUsageOID.CLIENT_AUTH)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cadata=google.proxy.server_ca.pem)
        with pem_files(key, cert) as path:
            context.load_cert_chain(path)
        address = google.addresses["PRIMARY"]
        try:
            with context.wrap_socket(socket.create_connection((address, 3307), timeout=5)) as tls:
                tls.sendall(b"\0\0\0\x08\x04\xd2\x16\x2f")  # SSLRequest: the proxy answers N
                return tls.recv(1) == b"N"
        except (ssl.SSLError, OSError):
            return False

    assert handshake(google.proxy.client_ca, 60)
    assert not handshake(google.proxy.client_ca, -30)
    assert not handshake(CertificateAuthority("someone else"), 60)
    deadline = time.monotonic() + 2  # the proxy's thread counts after the client sees it
    while google.proxy.refused_handshakes < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert google.proxy.refused_handshakes == 2


def requests_for(client, seconds: float, path: str = "/") -> list:
    """GET `path` every 50 ms for `seconds`: the responses."""
    responses, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        responses.append(client.get(path))
        time.sleep(0.05)
    return responses


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, hint",
    [
        ({"DB_PASS": "wrong"}, "check the user and password"),
        ({"DB_NAME": "no_such_db"}, "check the database name"),
    ],
    ids=["wrong password", "unknown database"],
)
def test_login_failures_are_configuration_errors_without_a_refresh_storm(
    admin, make_app, google, postgres, change, hint
):
    """The SQLSTATE (28P01, 3D000) survives the connector; the connector would refresh its
    certificate after each failure, but attempts are spaced 1 s, then 2 s, ... apart."""
    client = make_app(**{**password_env(postgres, google), **change}).test_client()
    responses = [client.get("/"), *requests_for(client, 2.5)]  # 2.5 s after the first failure
    assert {error_of(r) for r in responses} == {(500, "configuration_error")}
    assert google.refreshes() == 2  # at 0 s and 1 s; the next attempt is due at 3 s
    assert len(responses) > 10  # the others were answered from the last failure
    assert hint in responses[-1].get_json()["error"]["message"]
    assert "wrong" not in responses[-1].get_data(as_text=True)


@pytest.mark.slow
@pytest.mark.parametrize("status", [403, 404])
def test_admin_api_refusal_is_a_configuration_error_until_it_is_fixed(
    admin, make_app, google, postgres, status
):
    google.api.refuse_with = status
    client = make_app(**password_env(postgres, google)).test_client()
    responses = [client.get("/"), *requests_for(client, 1.5)]  # 1.5 s after the first failure
    assert {error_of(r) for r in responses} == {(500, "configuration_error")}
    message = responses[-1].get_json()["error"]["message"]
    assert "INSTANCE_CONNECTION_NAME" in message and "roles/cloudsql.client" in message
    assert google.api.calls["connectSettings"] == 2  # at 0 s and 1 s, not once a request

    google.api.refuse_with = None  # fixed (say, the role granted): the next attempt, due at
    fixed = time.monotonic()  # 3 s, succeeds; until then the last failure is the answer
    while client.get("/").status_code != 200:
        assert time.monotonic() - fixed < 2 + 1, "not recovered within one interval"
        time.sleep(0.05)
    assert google.api.calls["connectSettings"] == 3


@pytest.mark.slow
def test_connects_failing_together_are_all_classified(admin, make_app, google, postgres):
    """Five connects in flight when the Admin API starts refusing: the connector's cache is
    removed by the first and the others fail with KeyError; each still answers what the API
    said, and so does the back-off afterwards."""
    google.api.cert_lifetime_s = 200  # under the 4-minute buffer: every connect refreshes
    google.api.delay_s = 0.2  # so that the five overlap
    app = make_app(**password_env(postgres, google))
    assert app.test_client().get("/").status_code == 200
    google.api.refuse_with = 403
    terminate_function_connections(admin)
    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: app.test_client().get("/?limit=1"), range(5)))
    responses.append(app.test_client().get("/"))  # answered from the last failure
    assert [error_of(r) for r in responses] == [(500, "configuration_error")] * 6


def timed_get(url: str) -> tuple[int, str, float]:
    """(status, error code or "", seconds) of one GET."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - loopback
            response.read()
            return response.status, "", time.monotonic() - start
    except urllib.error.HTTPError as error:
        code = json.loads(error.read())["error"]["code"]
        return error.code, code, time.monotonic() - start


@pytest.mark.slow
def test_fifty_concurrent_requests_use_five_tunnels(admin, serve, google, postgres):
    """Through `functions-framework --target users`: 50 requests at once share the pool's 5
    connections, hence at most 5 TLS tunnels and 5 server connections, on one certificate."""
    seed.seed_users(admin, 200, progress=False)
    served = serve(**password_env(postgres, google))
    peak_server = [0]
    stop = threading.Event()

    def sample() -> None:
        conn = seed.connect(postgres.admin_url)
        while not stop.is_set():
            peak_server[0] = max(peak_server[0], function_connections(conn))
            time.sleep(0.01)
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(timed_get, [served.base + "/?limit=100"] * 50))
    stop.set()
    sampler.join()
    assert [status for status, _, _ in results] == [200] * 50
    assert 1 <= google.proxy.peak <= 5
    assert 1 <= peak_server[0] <= 5
    assert google.refreshes() == 1


@pytest.mark.slow
def test_a_slow_admin_api_is_bounded_by_the_connect_timeout(admin, serve, google, postgres):
    """Admin API answering in 12 s, DB_CONNECT_TIMEOUT=5, DB_POOL_TIMEOUT=3: every cold
    request is answered 503 database_unavailable within 5 + 3 + 2 s, none pool_exhausted."""
    google.api.delay_s = 12
    env = password_env(postgres, google, DB_CONNECT_TIMEOUT="5", DB_POOL_TIMEOUT="3")
    served = serve(**env, THREADS="10")
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(timed_get, [served.base + "/"] * 10))
    assert {(status, code) for status, code, _ in results} == {(503, "database_unavailable")}
    assert max(seconds for _, _, seconds in results) < 5 + 3 + 2
    assert google.api.calls["connectSettings"] == 1  # one attempt, then the back-off
    assert sum(google.proxy.tunnels.values()) == 0

    google.api.delay_s = 0.2  # the API recovers: so does the function, by itself
    recovered = time.monotonic()
    while timed_get(served.base + "/")[0] != 200:
        assert time.monotonic() - recovered < 2 + 5, "not recovered within one interval"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_login_abandoned_at_the_connect_timeout_is_closed(admin, make_app, google, postgres):
    """The connector runs pg8000's login in its loop's executor; cancelled meanwhile, asyncio
    would drop the connection it returns, open until the garbage collector finds it."""
    google.proxy.login_delay_s = 1.5
    env = password_env(postgres, google, DB_CONNECT_TIMEOUT="1")
    client = make_app(**env).test_client()
    gc.disable()  # the garbage collector must not be what closes it
    try:
        response = client.get("/")
        assert error_of(response) == (503, "database_unavailable")
        time.sleep(1.5)  # the login completes, into the void
        deadline = time.monotonic() + 3
        while google.proxy.open or function_connections(admin):
            assert time.monotonic() < deadline, "the abandoned connection is still open"
            time.sleep(0.05)
    finally:
        gc.enable()
    assert sum(google.proxy.tunnels.values()) == 1


CLOUD_ENV = {"INSTANCE_CONNECTION_NAME": "p:r:i", "DB_NAME": "d", "DB_USER": "u", "DB_PASS": "x"}


@pytest.mark.parametrize(
    "raw, endpoint",
    [
        ("", None),
        ("https://sqladmin-private.p.googleapis.com/", "https://sqladmin-private.p.googleapis.com"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
    ],
)
def test_cloud_sql_api_endpoint_setting(raw, endpoint):
    settings = config.load({**CLOUD_ENV, "CLOUD_SQL_API_ENDPOINT": raw})
    assert settings.cloud_sql.api_endpoint == endpoint


@pytest.mark.parametrize(
    "raw, problem",
    [
        ("http://sqladmin.example.com", "must use https"),
        ("sqladmin.googleapis.com", "base URL"),
        ("https://sqladmin.googleapis.com?key=1", "base URL"),
    ],
)
def test_cloud_sql_api_endpoint_rejected(raw, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        config.load({**CLOUD_ENV, "CLOUD_SQL_API_ENDPOINT": raw})
    assert caught.value.variable == "CLOUD_SQL_API_ENDPOINT"


COLD_START_PROBE = """
import json, sys, time
t0 = time.monotonic()
import functions_framework
app = functions_framework.create_app(target="users", source="main.py")
t1 = time.monotonic()
if sys.argv[1] == "cloud_sql":
    import lib.connectors.cloud_sql  # the connector stack, timed apart from the first request
t2 = time.monotonic()
client = app.test_client()
status = client.get("/").status_code
t3 = time.monotonic()
client.get("/")
t4 = time.monotonic()
print(json.dumps({"status": status, "import_main": t1 - t0, "import_connector": t2 - t1,
                  "first": t3 - t2, "second": t4 - t3, "start": t2, "modules": len(sys.modules)}))
"""


@pytest.mark.slow
def test_cold_start_of_both_paths(admin, google, postgres):
    """Figures for docs/performance.md ("Cold start"): a fresh interpreter imports main,
    answers its first request and a second one, through DATABASE_URL and through the connector
    with an Admin API that takes 100 ms a call (connectSettings and generateEphemeralCert run
    side by side)."""
    google.api.delay_s = 0.1
    envs = {
        "database_url": {"DATABASE_URL": postgres.admin_url},
        "cloud_sql": {k: v for k, v in password_env(postgres, google).items() if v},
    }
    runs: dict[str, list[dict]] = {"database_url": [], "cloud_sql": []}
    for _ in range(2):  # the best of two: on a shared machine, noise only adds
        for path, env in envs.items():
            google.api.timeline.clear()
            code = f"import sys; sys.argv[1:] = [{path!r}]\n{COLD_START_PROBE}"
            run = json.loads(run_python(code, env).strip().splitlines()[-1])
            assert run["status"] == 200
            if path == "cloud_sql":  # first token request to the certificate's answer
                timeline = google.api.timeline
                cert = next(t for t, e in timeline if e.startswith("answered") and "Ephemeral" in e)
                run["refresh"] = cert - timeline[0][0]
                run["before_refresh"] = timeline[0][0] - run["start"]
            runs[path].append(run)

    def ms(path: str, key: str) -> str:
        return f"{min(r[key] for r in runs[path]) * 1000:.0f} ms"

    figure(
        f"cold start, DATABASE_URL: import main {ms('database_url', 'import_main')}, "
        f"first answer {ms('database_url', 'first')}, next {ms('database_url', 'second')}"
    )
    figure(
        f"cold start, Cloud SQL connector (Admin API 100 ms a call): import main "
        f"{ms('cloud_sql', 'import_main')}, import of the connector stack "
        f"{ms('cloud_sql', 'import_connector')}, first answer {ms('cloud_sql', 'first')} "
        f"(before the first token request {ms('cloud_sql', 'before_refresh')}, token + "
        f"refresh {ms('cloud_sql', 'refresh')}), next "
        f"{ms('cloud_sql', 'second')}"
    )
