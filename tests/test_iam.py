"""IAM database login without naming the user (DB_IAM_AUTH=true), and each IAM failure as a
500 that names its fix. The real Connector and google-auth run against tests/google_fake.py:
the token endpoint of a key file, or the metadata server of a Cloud Run instance (reached
through GCE_METADATA_HOST, in a fresh interpreter: google-auth reads it at import)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import run_python
from tests.google_fake import GoogleFake

EMAIL = "fn@my-proj.iam.gserviceaccount.com"
IAM_USER = "fn@my-proj.iam"  # as Cloud SQL names the service account's database user


@pytest.fixture
def google(postgres, tmp_path) -> Iterator[GoogleFake]:
    fake = GoogleFake(tmp_path, (postgres.host, postgres.port), email=EMAIL)
    yield fake
    fake.close()


def add_iam_user(admin, google: GoogleFake, grant: bool = True) -> None:
    """The service account added to the instance as an IAM user (a role whose password only
    the fake knows), with SELECT on users unless `grant` is False."""
    cursor = admin.cursor()
    cursor.execute(
        f'DO $$ BEGIN CREATE ROLE "{IAM_USER}" LOGIN; EXCEPTION WHEN duplicate_object '
        "THEN NULL; END $$"
    )
    cursor.execute(f"ALTER ROLE \"{IAM_USER}\" PASSWORD 'iam-secret-1'")
    if grant:
        cursor.execute(f'GRANT SELECT ON users TO "{IAM_USER}"')
    google.iam_passwords[IAM_USER] = "iam-secret-1"


def iam_env(postgres, google: GoogleFake) -> dict[str, str]:
    return google.env(DB_IAM_AUTH="true", DB_NAME=make_url(postgres.admin_url).database)


def error_of(response) -> tuple[int, str, str]:
    error = response.get_json()["error"]
    return response.status_code, error["code"], error["message"]


PROBE = """
import json, functions_framework
app = functions_framework.create_app(target="users", source="main.py")
response = app.test_client().get("/")
print(json.dumps({"status": response.status_code, "body": response.get_json()}))
"""


@pytest.mark.slow
def test_the_user_is_the_service_account_named_by_the_metadata_server(
    admin, google, postgres, tmp_path
):
    add_iam_user(admin, google)
    env = google.metadata_env(DB_IAM_AUTH="true", DB_NAME=make_url(postgres.admin_url).database)
    del env["GOOGLE_APPLICATION_CREDENTIALS"]  # on Cloud Run there is no key file
    env["CLOUDSDK_CONFIG"] = str(tmp_path)  # nor a gcloud login
    output = run_python(PROBE, {k: v for k, v in env.items() if v}).strip().splitlines()
    result = json.loads(output[-1])
    assert result["status"] == 200, "\n".join(output)
    assert google.api.calls["metadata"] >= 2  # the email, then tokens
    assert google.api.calls["token"] == 0  # no key file's token endpoint was used
    assert google.api.login_principals == [EMAIL]  # the login token was the runtime account's
    assert google.proxy.iam_logins == [IAM_USER]
    logged = [json.loads(line) for line in output[:-1] if line.startswith("{")]
    assert any(
        line["message"] == f"IAM database login as {IAM_USER} (service account {EMAIL}, "
        "from the metadata server)"
        for line in logged
    ), output


@pytest.mark.slow
def test_the_user_is_the_service_account_of_the_key_file(admin, make_app, google, postgres, capfd):
    add_iam_user(admin, google)
    response = make_app(**iam_env(postgres, google)).test_client().get("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert google.proxy.iam_logins == [IAM_USER]
    assert f"IAM database login as {IAM_USER} (service account {EMAIL}, from the credentials)" in (
        capfd.readouterr().out
    )


@pytest.mark.slow
def test_no_login_permission_names_the_role_to_grant(admin, make_app, google, postgres):
    add_iam_user(admin, google)
    google.proxy.login_denied.add(EMAIL)
    response = make_app(**iam_env(postgres, google)).test_client().get("/")
    status, code, message = error_of(response)
    assert (status, code) == (500, "configuration_error")
    assert "DB_IAM_AUTH" in message and EMAIL in message
    assert "roles/cloudsql.instanceUser" in message and "cloudsql.instances.login" in message


@pytest.mark.slow
def test_an_iam_user_not_added_to_the_instance_names_the_command(admin, make_app, google, postgres):
    response = make_app(**iam_env(postgres, google)).test_client().get("/")
    status, code, message = error_of(response)
    assert (status, code) == (500, "configuration_error")
    assert (
        f"gcloud sql users create {IAM_USER} --instance=main --type=cloud_iam_service_account"
        in message
    )


@pytest.mark.slow
def test_no_client_role_names_roles_cloudsql_client(admin, make_app, google, postgres):
    add_iam_user(admin, google)
    google.api.refuse_with = 403
    response = make_app(**iam_env(postgres, google)).test_client().get("/")
    status, code, message = error_of(response)
    assert (status, code) == (500, "configuration_error")
    assert "roles/cloudsql.client" in message


@pytest.mark.slow
def test_missing_grants_name_the_grant(admin, make_app, google, postgres):
    add_iam_user(admin, google, grant=False)
    response = make_app(**iam_env(postgres, google)).test_client().get("/")
    status, code, message = error_of(response)
    assert (status, code) == (500, "configuration_error")
    assert "grant the function's role SELECT" in message
    assert google.proxy.iam_logins == [IAM_USER]  # the login itself succeeded


@pytest.mark.slow
def test_a_users_own_login_names_no_database_user(admin, make_app, google, postgres, tmp_path):
    """gcloud's application-default login is a person's, not a service account's."""
    key = tmp_path / "adc.json"
    key.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "c",
                "client_secret": "s",
                "refresh_token": "r",
            }
        )
    )
    env = {**iam_env(postgres, google), "GOOGLE_APPLICATION_CREDENTIALS": str(key)}
    response = make_app(**env).test_client().get("/")
    status, code, message = error_of(response)
    assert (status, code) == (500, "configuration_error")
    assert "DB_IAM_AUTH" in message and "set DB_IAM_USER" in message
    assert google.api.calls == {}  # nothing asked of Google


def test_iam_auth_takes_no_password():
    from lib import config
    from lib.errors import ConfigError

    env = {"INSTANCE_CONNECTION_NAME": "p:r:i", "DB_NAME": "d", "DB_IAM_AUTH": "true"}
    settings = config.load(env)
    assert settings.cloud_sql.iam_auth and settings.cloud_sql.user == ""
    assert settings.cloud_sql.password is None
    with pytest.raises(ConfigError, match="takes no DB_USER or DB_PASS") as caught:
        config.load({**env, "DB_USER": "u", "DB_PASS": "x"})
    assert caught.value.variable == "DB_IAM_AUTH"
