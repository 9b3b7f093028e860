"""The AlloyDB path end to end: the real AlloyDB Connector, its gRPC client, google-auth and
grpcio against a fake of Google's side (tests/alloydb_fake.py: the Admin API over gRPC with
TLS, the server proxy on port 5433 with the metadata exchange; tests/google_fake.py: the
key file's token endpoint), through to the test PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy.engine import make_url

from devtools import seed
from tests.alloydb_fake import AlloyDbFake
from tests.conftest import insert_users, terminate_function_connections
from tests.google_fake import GoogleFake
from tests.test_connect_url import replicas  # noqa: F401 - a primary and its standby

EMAIL = "fn@my-proj.iam.gserviceaccount.com"
IAM_USER = "fn@my-proj.iam"


@pytest.fixture
def google(postgres, tmp_path) -> Iterator[GoogleFake]:
    fake = GoogleFake(tmp_path, (postgres.host, postgres.port), email=EMAIL)
    yield fake
    fake.close()


@pytest.fixture
def alloy(google) -> Iterator[AlloyDbFake]:
    fake = AlloyDbFake(google)
    yield fake
    fake.close()


def password_env(postgres, alloy: AlloyDbFake, *uris: str, **extra: str) -> dict[str, str]:
    url = make_url(postgres.admin_url)
    login = {"DB_USER": url.username, "DB_PASS": url.password, "DB_NAME": url.database}
    return alloy.env(*uris, **{**login, **extra})


def error_of(response) -> tuple[int, str, str]:
    error = response.get_json()["error"]
    return response.status_code, error["code"], error["message"]


@pytest.mark.slow
def test_password_login_through_the_alloydb_connector(admin, make_app, alloy, postgres):
    insert_users(admin, [("a@example.com", "A", "2024-01-01T00:00:00Z")])
    uri = alloy.add_instance("primary", (postgres.host, postgres.port))
    client = make_app(**password_env(postgres, alloy, uri)).test_client()
    assert alloy.calls == {}  # nothing built at import
    response = client.get("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["users"][0]["email"] == "a@example.com"
    assert alloy.calls == {
        (uri, "GetConnectionInfo"): 1,
        (alloy.cluster, "GenerateClientCertificate"): 1,
    }
    proxy = alloy.proxies[uri]
    assert proxy.exchanges == {"DB_NATIVE": 1}
    assert proxy.tunnels == {alloy.instances[uri]["PRIVATE"]: 1}  # AlloyDB's default IP type


@pytest.mark.slow
def test_iam_login_as_the_runtime_service_account(admin, make_app, alloy, postgres, capfd):
    cursor = admin.cursor()
    cursor.execute(
        f'DO $$ BEGIN CREATE ROLE "{IAM_USER}" LOGIN; EXCEPTION WHEN duplicate_object '
        "THEN NULL; END $$"
    )
    cursor.execute(f"ALTER ROLE \"{IAM_USER}\" PASSWORD 'alloy-iam-1'")
    cursor.execute(f'GRANT SELECT ON users TO "{IAM_USER}"')
    alloy.google.iam_passwords[IAM_USER] = "alloy-iam-1"
    uri = alloy.add_instance("primary", (postgres.host, postgres.port))
    db = make_url(postgres.admin_url).database
    client = make_app(**alloy.env(uri, DB_IAM_AUTH="true", DB_NAME=db)).test_client()
    assert client.get("/").status_code == 200
    assert alloy.proxies[uri].exchanges == {"AUTO_IAM": 1}
    assert alloy.proxies[uri].iam_logins == [IAM_USER]  # no password was the function's
    assert f"IAM database login as {IAM_USER}" in capfd.readouterr().out


@pytest.mark.slow
def test_a_wrong_password_is_a_configuration_error_without_a_refresh_storm(
    admin, make_app, alloy, postgres
):
    uri = alloy.add_instance("primary", (postgres.host, postgres.port))
    client = make_app(**password_env(postgres, alloy, uri, DB_PASS="wrong")).test_client()
    responses, end = [], time.monotonic() + 1.5
    while time.monotonic() < end:
        responses.append(client.get("/"))
        time.sleep(0.05)
    assert {error_of(r)[:2] for r in responses} == {(500, "configuration_error")}
    assert "check the user and password" in error_of(responses[-1])[2]
    assert alloy.refreshes(uri) <= 2  # at 0 s and after 1 s, not once a request
    assert len(responses) > 10


@pytest.mark.slow
def test_admin_api_refusal_names_the_role(admin, make_app, alloy, postgres):
    uri = alloy.add_instance("primary", (postgres.host, postgres.port))
    alloy.refuse_with = grpc.StatusCode.PERMISSION_DENIED
    response = make_app(**password_env(postgres, alloy, uri)).test_client().get("/")
    status, code, message = error_of(response)
    assert (status, code) == (500, "configuration_error")
    assert "ALLOYDB_INSTANCE_URI" in message and "roles/alloydb.client" in message


@pytest.mark.slow
def test_lazy_refresh_and_a_killed_backend(admin, make_app, alloy, postgres):
    """A certificate of 4 min + 2 s (the connector's buffer is 4 min) is reused for 2 s:
    killed backends are replaced on it, then the next new connection refreshes."""
    from google.cloud.alloydbconnector.refresh_utils import _refresh_buffer

    alloy.cert_lifetime_s = _refresh_buffer + 2
    uri = alloy.add_instance("primary", (postgres.host, postgres.port))
    client = make_app(**password_env(postgres, alloy, uri)).test_client()
    assert client.get("/").status_code == 200
    issued = time.monotonic()
    assert terminate_function_connections(admin) >= 1
    assert client.get("/").status_code == 200
    assert alloy.refreshes(uri) == 1  # the killed backend was replaced on the same certificate
    time.sleep(max(0.0, issued + 2.5 - time.monotonic()))
    terminate_function_connections(admin)
    assert client.get("/").status_code == 200
    assert alloy.refreshes(uri) == 2
    assert sum(alloy.proxies[uri].tunnels.values()) == 3


@pytest.mark.slow
def test_the_read_pool_serves_and_the_primary_is_not_needed(replicas, make_app, alloy):  # noqa: F811
    primary, standby = replicas
    primary_uri = alloy.add_instance("primary", ("127.0.0.1", primary.port))
    pool_uri = alloy.add_instance("read-pool", ("127.0.0.1", standby.port))
    url = make_url(primary.url())
    env = alloy.env(
        primary_uri,
        pool_uri,
        DB_USER=url.username,
        DB_PASS=url.password,
        DB_NAME=url.database,
    )
    client = make_app(**env).test_client()
    for _ in range(10):
        assert client.get("/?limit=1").status_code == 200
    assert sum(alloy.proxies[pool_uri].tunnels.values()) >= 1
    assert sum(alloy.proxies[primary_uri].tunnels.values()) <= 1  # to learn it is the primary
    alloy.proxies[primary_uri].close()
    on_standby = seed.connect(standby.url())
    try:
        assert terminate_function_connections(on_standby) >= 1  # new connections needed
    finally:
        on_standby.close()
    for _ in range(5):
        assert client.get("/?limit=1").status_code == 200
    assert sum(alloy.proxies[primary_uri].tunnels.values()) <= 1


ALLOYDB_ENV = {"DB_NAME": "d", "DB_USER": "u", "DB_PASS": "x"}
URI = "projects/p/locations/us-central1/clusters/c/instances/"


def test_alloydb_settings():
    from lib import config

    env = {
        **ALLOYDB_ENV,
        "ALLOYDB_INSTANCE_URI": f"{URI}primary, {URI}read-pool",
        "ALLOYDB_API_ENDPOINT": "alloydb.googleapis.com:443",
    }
    ad = config.load(env).alloydb
    assert ad.instances == (f"{URI}primary", f"{URI}read-pool")
    assert ad.ip_type == "PRIVATE"  # AlloyDB's default: instances have private IPs
    assert ad.api_endpoint == "alloydb.googleapis.com:443"
    assert ad.target_session_attrs == "prefer-standby"


@pytest.mark.parametrize(
    "change, variable, problem",
    [
        ({"ALLOYDB_INSTANCE_URI": "p:r:i"}, "ALLOYDB_INSTANCE_URI", "must look like projects/"),
        (
            {"ALLOYDB_API_ENDPOINT": "https://alloydb.googleapis.com"},
            "ALLOYDB_API_ENDPOINT",
            "host",
        ),
        ({"INSTANCE_CONNECTION_NAME": "p:r:i"}, "DATABASE_URL", "set one of"),
    ],
)
def test_bad_alloydb_settings_name_the_variable(change, variable, problem):
    from lib import config
    from lib.errors import ConfigError

    env = {**ALLOYDB_ENV, "ALLOYDB_INSTANCE_URI": f"{URI}primary", **change}
    with pytest.raises(ConfigError, match=problem) as caught:
        config.load(env)
    assert caught.value.variable == variable
