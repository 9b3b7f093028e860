"""The Cloud SQL Connector path, up to the connector's network call.

Only what cannot exist here is faked: Google credentials (a generated service-account key)
and the Cloud SQL Admin API + TLS tunnel (`Connector.connect`, which here returns a real
pg8000 connection to the test database). The real Connector is constructed by our code.
"""

from __future__ import annotations

import json

import pg8000.dbapi
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import insert_users, terminate_function_connections

INSTANCE = "my-proj:us-central1:main"


@pytest.fixture
def fake_credentials(tmp_path, monkeypatch):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "my-proj",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "fn@my-proj.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("NO_GCE_CHECK", "true")


@pytest.fixture
def connector_calls(postgres, monkeypatch, fake_credentials):
    """Record Connector construction and connect() calls; connect to the test database."""
    from google.cloud.sql.connector import Connector

    calls: dict[str, list] = {"init": [], "connect": []}
    real_init = Connector.__init__

    def init(self, *args, **kwargs):
        calls["init"].append(self)
        real_init(self, *args, **kwargs)

    def connect(self, instance, driver, **kwargs):
        calls["connect"].append((instance, driver, dict(kwargs)))
        if kwargs["user"] == "broken":
            raise RuntimeError("Admin API: 403 Forbidden")
        kwargs.pop("db")
        kwargs.update(user="postgres", password="postgres")  # the test server's login
        return pg8000.dbapi.connect(
            host=postgres.host, port=postgres.port, database="postgres", **kwargs
        )

    monkeypatch.setattr(Connector, "__init__", init)
    monkeypatch.setattr(Connector, "connect", connect)
    return calls


def cloud_env(**extra: str) -> dict[str, str]:
    return {"INSTANCE_CONNECTION_NAME": INSTANCE, "DB_NAME": "app", "DATABASE_URL": "", **extra}


def test_password_login_through_the_connector(admin, make_app, connector_calls):
    from google.cloud.sql.connector import IPTypes
    from google.cloud.sql.connector.enums import RefreshStrategy

    insert_users(admin, [("a@example.com", "A", "2024-01-01T00:00:00Z")])
    client = make_app(
        **cloud_env(DB_USER="app-user", DB_PASS="pw", PRIVATE_IP="true")
    ).test_client()
    assert connector_calls["init"] == []  # nothing built at import
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json()["users"][0]["email"] == "a@example.com"

    [connector] = connector_calls["init"]
    assert connector._refresh_strategy == RefreshStrategy.LAZY
    assert connector._ip_type == IPTypes.PRIVATE
    assert connector._enable_iam_auth is False
    instance, driver, kwargs = connector_calls["connect"][0]
    assert (instance, driver) == (INSTANCE, "pg8000")
    assert (kwargs["user"], kwargs["password"], kwargs["db"]) == ("app-user", "pw", "app")
    assert kwargs["application_name"] == "users-function"
    assert kwargs["startup_params"]["default_transaction_read_only"] == "on"


def test_iam_login_and_psc(admin, make_app, connector_calls):
    from google.cloud.sql.connector import IPTypes

    client = make_app(**cloud_env(DB_IAM_USER="fn@my-proj.iam", IP_TYPE="psc")).test_client()
    assert client.get("/").status_code == 200
    [connector] = connector_calls["init"]
    assert connector._enable_iam_auth is True and connector._ip_type == IPTypes.PSC
    assert connector_calls["connect"][0][2]["password"] is None


def test_one_connector_per_process_however_many_connections(admin, make_app, connector_calls):
    client = make_app(**cloud_env(DB_USER="u", DB_PASS="pw")).test_client()
    import main  # the module make_app just loaded

    for _ in range(4):
        assert client.get("/").status_code == 200
        terminate_function_connections(admin)  # force a new connection next time
    assert len(connector_calls["connect"]) >= 4
    assert len(connector_calls["init"]) == 1
    connector = connector_calls["init"][0]
    main.DB.close()  # what happens at shutdown
    assert connector._closed is True


def test_connector_failure_is_a_503(admin, make_app, connector_calls):
    client = make_app(**cloud_env(DB_USER="broken", DB_PASS="pw")).test_client()
    response = client.get("/")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert "403" not in response.get_data(as_text=True)
