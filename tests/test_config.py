"""Configuration: every URL form, sslmode's libpq meaning, and one clear error per bad variable."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from lib.config import DEFAULT_COLUMNS, ConfigError, load
from lib.database_url.uri import Host, parse
from tests.conftest import ROOT, insert_users
from tests.test_tls import make_ca, pem

BASE = {"DATABASE_URL": "postgresql://app:pw@db.example.com:6543/appdb"}


@pytest.mark.parametrize(
    "url",
    [
        "postgres://app:pw@db.example.com:6543/appdb",
        "postgresql://app:pw@db.example.com:6543/appdb",
        "postgresql+pg8000://app:pw@db.example.com:6543/appdb",
    ],
)
def test_url_schemes(url):
    parsed = parse(url)
    assert (parsed.user, parsed.password, parsed.hosts, parsed.database) == (
        "app",
        "pw",
        (Host("db.example.com", 6543),),
        "appdb",
    )
    assert parsed.sslmode == "prefer"  # no sslmode: libpq's default


def test_percent_encoded_password():
    assert parse("postgresql://app:p%40ss%2Fw%3Ard+x@h/db").password == "p@ss/w:rd+x"


@pytest.mark.parametrize(
    ("url", "socket_path"),
    [
        ("postgresql://app@/appdb?host=/cloudsql/p:r:i", "/cloudsql/p:r:i/.s.PGSQL.5432"),
        (
            "postgresql://app@:6000/appdb?host=/var/run/postgresql",
            "/var/run/postgresql/.s.PGSQL.6000",
        ),
        ("postgresql://app@%2Fvar%2Frun%2Fpostgresql/appdb", "/var/run/postgresql/.s.PGSQL.5432"),
        ("postgresql+pg8000://app@/appdb?unix_sock=/tmp/.s.PGSQL.5432", "/tmp/.s.PGSQL.5432"),
    ],
)
def test_unix_socket_forms(url, socket_path):
    [host] = parse(url + "&sslmode=require" if "?" in url else url).hosts
    assert host.socket_path == socket_path


def test_sslmode_means_what_libpq_means(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt

    def url(mode: str, extra: str = ""):
        return parse(f"postgresql://a:b@h/db?sslmode={mode}{extra}")

    assert url("disable").ssl_context is None
    for mode in ("allow", "prefer", "require", "no-verify"):  # TLS, no certificate check
        context = url(mode).ssl_context
        assert context.verify_mode == ssl.CERT_NONE and context.check_hostname is False
    assert url("no-verify").sslmode == "require"  # node-postgres's spelling of require
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pem(make_ca("test")[1]))
    verify_ca = url("verify-ca", f"&sslrootcert={ca}").ssl_context
    assert verify_ca.verify_mode == ssl.CERT_REQUIRED and verify_ca.check_hostname is False
    verify_full = url("verify-full", f"&sslrootcert={ca}").ssl_context
    assert verify_full.verify_mode == ssl.CERT_REQUIRED and verify_full.check_hostname is True
    for mode in ("verify-ca", "verify-full"):  # libpq needs a root certificate
        with pytest.raises(ConfigError, match=r"root certificate .*does not exist"):
            url(mode)
    system = parse("postgresql://a:b@h/db?sslrootcert=system")  # Neon's recommendation
    assert system.sslmode == "verify-full" and system.ssl_context.check_hostname is True
    for weak in ("disable", "allow", "prefer", "require", "verify-ca"):
        with pytest.raises(ConfigError, match="too weak for sslrootcert=system"):
            url(weak, "&sslrootcert=system")
    # require with a root certificate that exists is verify-ca; with a missing one, require.
    assert url("require", f"&sslrootcert={ca}").sslmode == "verify-ca"
    missing = url("require", f"&sslrootcert={tmp_path}/missing.pem")
    assert missing.sslmode == "require" and missing.ssl_context.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({}, "DATABASE_URL", "not set"),
        ({**BASE, "INSTANCE_CONNECTION_NAME": "p:r:i"}, "DATABASE_URL", "set one of"),
        ({"DATABASE_URL": "mysql://a:b@h/db"}, "DATABASE_URL", "scheme 'mysql'"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL", "is not a URL"),
        (
            {"DATABASE_URL": "postgresql://a:b@h/db?sslmode=verify"},
            "DATABASE_URL",
            "sslmode 'verify'",
        ),
        (
            {"DATABASE_URL": "postgresql://a:b@h/db?connect_timout=3"},
            "DATABASE_URL",
            "connect_timout",
        ),
        ({"DATABASE_URL": "postgresql://a:b@h/db?x=%0"}, "DATABASE_URL", "percent-encoding"),
        ({"DATABASE_URL": "postgresql://a:b@h/db?port=%00"}, "DATABASE_URL", "%00"),
        ({**BASE, "DB_POOL_SIZE": "five"}, "DB_POOL_SIZE", "not a whole number"),
        ({**BASE, "DB_POOL_SIZE": "0"}, "DB_POOL_SIZE", "at least 1"),
        ({**BASE, "DB_MAX_OVERFLOW": "-1"}, "DB_MAX_OVERFLOW", "at least 0"),
        ({**BASE, "DB_POOL_TIMEOUT": "0"}, "DB_POOL_TIMEOUT", "between 0 and 3600"),
        ({**BASE, "DB_CONNECT_TIMEOUT": "soon"}, "DB_CONNECT_TIMEOUT", "not a number"),
        ({**BASE, "DB_STATEMENT_TIMEOUT_MS": "1.5"}, "DB_STATEMENT_TIMEOUT_MS", "whole number"),
        ({**BASE, "DB_IDLE_TIMEOUT": "-1"}, "DB_IDLE_TIMEOUT", "between 0 and 3600"),
        ({**BASE, "DB_MAX_WAITING": "-2"}, "DB_MAX_WAITING", "at least 0"),
        ({**BASE, "DB_APPLICATION_NAME": "a b"}, "DB_APPLICATION_NAME", "letters"),
        ({**BASE, "USERS_COLUMNS": "id,Email"}, "USERS_COLUMNS", "'Email'"),
        ({**BASE, "USERS_COLUMNS": "id;drop table users"}, "USERS_COLUMNS", "plain"),
        ({**BASE, "USERS_COLUMNS": "id,id"}, "USERS_COLUMNS", "twice"),
        ({"INSTANCE_CONNECTION_NAME": "nocolons"}, "INSTANCE_CONNECTION_NAME", "project:region"),
        ({"INSTANCE_CONNECTION_NAME": "p:r:i"}, "DB_NAME", "required"),
        ({"INSTANCE_CONNECTION_NAME": "p:r:i", "DB_NAME": "d"}, "DB_USER", "required"),
        (
            {"INSTANCE_CONNECTION_NAME": "p:r:i", "DB_NAME": "d", "DB_USER": "u"},
            "DB_PASS",
            "required",
        ),
        (
            {
                "INSTANCE_CONNECTION_NAME": "p:r:i",
                "DB_NAME": "d",
                "DB_IAM_USER": "sa@p.iam",
                "DB_PASS": "x",
            },
            "DB_IAM_USER",
            "no DB_USER or DB_PASS",
        ),
        (
            {
                "INSTANCE_CONNECTION_NAME": "p:r:i",
                "DB_NAME": "d",
                "DB_IAM_USER": "sa@p.iam.gserviceaccount.com",
            },
            "DB_IAM_USER",
            ".gserviceaccount.com",
        ),
        (
            {
                "INSTANCE_CONNECTION_NAME": "p:r:i",
                "DB_NAME": "d",
                "DB_USER": "u",
                "DB_PASS": "x",
                "IP_TYPE": "vpn",
            },
            "IP_TYPE",
            "'vpn'",
        ),
        (
            {
                "INSTANCE_CONNECTION_NAME": "p:r:i",
                "DB_NAME": "d",
                "DB_USER": "u",
                "DB_PASS": "x",
                "PRIVATE_IP": "maybe",
            },
            "PRIVATE_IP",
            "true or false",
        ),
    ],
)
def test_each_bad_setting_is_one_error_naming_its_variable(env, variable, fragment):
    with pytest.raises(ConfigError) as caught:
        load(env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ": ")
    assert fragment in str(caught.value)


def test_defaults():
    settings = load(BASE)
    assert settings.columns == DEFAULT_COLUMNS
    assert (settings.pool_size, settings.max_overflow, settings.pool_recycle) == (5, 0, 1800)
    assert 0 < settings.pool_timeout <= 5
    assert settings.statement_timeout_ms / 1000 < 60  # well under the function timeout
    assert (settings.idle_timeout, settings.max_waiting) == (10.0, None)
    assert settings.application_name == "users-function"
    assert load({**BASE, "DB_IDLE_TIMEOUT": "0", "DB_MAX_WAITING": "0"}).idle_timeout == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DB_USER": "u", "DB_PASS": "pw"}, ("u", "pw", False, "PUBLIC")),
        ({"DB_USER": "u", "DB_PASS": "pw", "PRIVATE_IP": "true"}, ("u", "pw", False, "PRIVATE")),
        ({"DB_USER": "u", "DB_PASS": "pw", "IP_TYPE": "PSC"}, ("u", "pw", False, "PSC")),
        (
            {"DB_IAM_USER": "fn-sa@proj.iam", "IP_TYPE": "private"},
            ("fn-sa@proj.iam", None, True, "PRIVATE"),
        ),
    ],
)
def test_cloud_sql_settings(env, expected):
    settings = load(
        {"INSTANCE_CONNECTION_NAME": "my-proj:us-central1:main", "DB_NAME": "app", **env}
    )
    cs = settings.cloud_sql
    assert (cs.user, cs.password, cs.iam_auth, cs.ip_type) == expected
    assert settings.url is None


def test_repr_never_shows_a_password():
    text = repr(load({"DATABASE_URL": "postgresql://app:hunter2@h/db"}))
    text += repr(
        load(
            {
                "INSTANCE_CONNECTION_NAME": "p:r:i",
                "DB_NAME": "d",
                "DB_USER": "u",
                "DB_PASS": "hunter2",
            }
        )
    )
    assert "hunter2" not in text


@pytest.mark.slow
def test_a_bad_setting_stops_functions_framework_with_one_line():
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "mysql://a:secretpw@h/db"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from functions_framework._cli import _cli; _cli()",
            "--target",
            "users",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "users function: configuration error: DATABASE_URL: scheme 'mysql'" in result.stderr
    assert "Traceback" not in result.stderr and "secretpw" not in result.stderr


@pytest.mark.parametrize(
    ("sslmode", "works"),
    [
        ("disable", True),
        ("allow", True),
        ("prefer", True),
        ("require", False),
        ("verify-full&sslrootcert=system", False),
    ],
)
def test_sslmode_against_a_server_without_tls(admin, postgres, make_app, sslmode, works):
    """The test server offers no TLS: 'prefer' falls back to plain, 'require' must refuse,
    and say so: a server without TLS will not grow it by itself (500, not 503)."""
    insert_users(admin, [("a@example.com", "A", "2024-01-01T00:00:00Z")])
    url = postgres.url(query=f"sslmode={sslmode}")
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == (200 if works else 500)
    if not works:
        error = response.get_json()["error"]
        assert error["code"] == "configuration_error"
        assert "TLS is required" in error["message"]


def test_unix_socket_url_serves_users(admin, postgres, make_app):
    if postgres.embedded is None or postgres.embedded.socket_dir is None:
        pytest.skip("needs the embedded server's Unix socket")
    insert_users(admin, [("a@example.com", "A", "2024-01-01T00:00:00Z")])
    url = f"postgresql://postgres@:{postgres.port}/postgres?host={postgres.embedded.socket_dir}"
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 200
    assert response.get_json()["users"][0]["email"] == "a@example.com"


@pytest.mark.parametrize(
    ("raw", "lag"), [("", 30.0), ("2.5", 2.5), ("off", None), ("0", None), (" OFF ", None)]
)
def test_max_replica_lag(raw, lag):
    env = {"DATABASE_URL": "postgresql://u@h/d", "DB_MAX_REPLICA_LAG": raw}
    assert load(env).max_replica_lag == lag


def test_max_replica_lag_must_be_seconds():
    env = {"DATABASE_URL": "postgresql://u@h/d", "DB_MAX_REPLICA_LAG": "soon"}
    with pytest.raises(ConfigError, match="not a number of seconds"):
        load(env)
