"""DATABASE_URL against real servers: host lists and a real streaming standby, libpq's
authentication rules (channel binding against a TLS PostgreSQL doing SCRAM-SHA-256-PLUS),
keepalives on the socket, and every misconfiguration answered as one, never as an outage."""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import socket
import tempfile
import time
from pathlib import Path

import pytest

from devtools import seed
from devtools.devdb import EmbeddedPostgres, free_port
from tests.conftest import insert_users
from tests.connections import function_connections
from tests.relay import Relay
from tests.test_tls import client_certificate, make_ca, pem, server_certificate

ROWS = [("a@example.com", "A", "2024-01-01T00:00:00Z")]
LATIN1_PASSWORD = "café".encode("latin-1")  # b"caf\xe9": percent-encoded as caf%E9


def world_dir(prefix: str) -> Path:
    """A directory servers running as `nobody` (when tests run as root) can write in."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o777)
    return path


def connections_of(url: str) -> int:
    conn = seed.connect(url)
    try:
        return function_connections(conn)
    finally:
        conn.close()


# --- host lists ----------------------------------------------------------------------------


def test_a_dead_first_host_is_skipped(admin, postgres, make_app):
    insert_users(admin, ROWS)
    dead = free_port()  # nothing listens: refused at once
    url = postgres.url(host=f"127.0.0.1:{dead},{postgres.host}")
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["users"][0]["email"] == "a@example.com"


@pytest.mark.slow
def test_each_host_gets_connect_timeout_then_the_next_one_serves(admin, postgres, make_app):
    insert_users(admin, ROWS)
    hole = Relay((postgres.host, postgres.port))  # accepts, never answers: a timeout ends it
    hole.set("blackhole")
    try:
        url = postgres.url(
            host=f"127.0.0.1:{hole.port},{postgres.host}",
            query=f"{postgres.query}&connect_timeout=2",
        )
        client = make_app(DATABASE_URL=url).test_client()
        started = time.monotonic()
        response = client.get("/")
        waited = time.monotonic() - started
    finally:
        hole.close()
    assert response.status_code == 200
    assert 2.0 <= waited < 2.0 + 3.0  # the first host had its 2 s, and no more


def test_every_host_down_is_an_outage_naming_none_of_the_secrets(make_app):
    url = f"postgresql://u:SECRET-9@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/db"
    response = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT="0.5").test_client().get("/")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "SECRET-9" not in response.get_data(as_text=True)


@pytest.fixture(scope="module")
def replicas():
    """A primary and its streaming hot standby (pg_basebackup -R), both seeded."""
    base = world_dir("pgrepl")
    primary = EmbeddedPostgres(base / "primary").start()
    seed.seed_server(primary.url(), 3)
    standby = primary.standby(base / "standby")
    standby.port = free_port()
    standby.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the standby has replayed the seed
            conn = seed.connect(standby.url())
            cursor = conn.cursor()
            cursor.execute("SELECT pg_is_in_recovery(), (SELECT count(*) FROM users)")
            in_recovery, count = cursor.fetchone()
            conn.close()
            if count == 3:
                break
            time.sleep(0.1)
        assert in_recovery and count == 3
        yield primary, standby
    finally:
        standby.stop("immediate")
        primary.stop("immediate")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("order", "attrs", "served_by"),
    [
        ("standby,primary", "read-write", "primary"),
        ("standby,primary", "primary", "primary"),
        ("standby,primary", "any", "standby"),
        ("primary,standby", "prefer-standby", "standby"),
        ("primary,standby", "standby", "standby"),
        ("primary,standby", "read-only", "primary"),  # our sessions are read-only everywhere
    ],
)
def test_target_session_attrs_pick_the_right_server(replicas, make_app, order, attrs, served_by):
    servers = dict(zip(("primary", "standby"), replicas, strict=True))
    hosts = ",".join(f"127.0.0.1:{servers[name].port}" for name in order.split(","))
    url = f"postgresql://postgres:postgres@{hosts}/postgres?sslmode=disable"
    client = make_app(DATABASE_URL=f"{url}&target_session_attrs={attrs}").test_client()
    response = client.get("/")
    assert response.status_code == 200
    assert len(response.get_json()["users"]) == 3
    counts = {name: connections_of(server.url()) for name, server in servers.items()}
    assert counts[served_by] == 1 and sum(counts.values()) == 1, counts


@pytest.mark.slow
def test_prefer_standby_falls_back_to_the_primary(replicas, make_app):
    primary, _ = replicas
    url = (
        f"postgresql://postgres:postgres@127.0.0.1:{primary.port}/postgres"
        "?sslmode=disable&target_session_attrs=prefer-standby"
    )
    assert make_app(DATABASE_URL=url).test_client().get("/").status_code == 200
    url = url.replace("prefer-standby", "standby")  # no standby at all: may change (failover)
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 503


# --- authentication rules ------------------------------------------------------------------


def _debian_postgres() -> Path | None:
    """A PostgreSQL built with TLS (Debian's package; .ci/run installs it): the wheel's server
    has no TLS, and channel binding needs the server itself to terminate TLS."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def tls_postgres():
    """PostgreSQL with TLS on, and one role per authentication method."""
    binaries = _debian_postgres()
    if binaries is None:
        pytest.skip("no PostgreSQL with TLS (apt-get install postgresql; .ci/run does)")
    base = world_dir("pgauth")
    server = EmbeddedPostgres(base / "data", binaries=binaries)
    ca_key, ca = make_ca("auth test CA")
    cert, key = server_certificate(ca_key, ca)
    (base / "server.crt").write_bytes(cert)
    (base / "server.key").write_bytes(key)
    (base / "server.key").chmod(0o600)
    (base / "ca.crt").write_bytes(pem(ca))  # the server checks client certificates with it
    client_cert, client_key = client_certificate(ca_key, ca, "u_cert")
    (base / "client.crt").write_bytes(client_cert)
    (base / "client.key").write_bytes(client_key)
    (base / "client.key").chmod(0o600)
    if os.geteuid() == 0:  # the server runs as `nobody` and must own its key
        nobody = pwd.getpwnam("nobody")
        for path in (base / "server.crt", base / "server.key", base / "ca.crt"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    server.settings += (
        "ssl=on",
        f"ssl_cert_file={base}/server.crt",
        f"ssl_key_file={base}/server.key",
        f"ssl_ca_file={base}/ca.crt",
    )
    server.base = base
    server.start()
    conn = seed.connect(server.url())
    seed.create_schema(conn)
    seed.seed_users(conn, 2, progress=False)
    cursor = conn.cursor()
    for method in ("trust", "password", "md5", "scram", "cert"):
        cursor.execute(f"DROP ROLE IF EXISTS u_{method}")
        if method == "md5":
            cursor.execute("SET password_encryption = 'md5'")
        cursor.execute(f"CREATE ROLE u_{method} LOGIN PASSWORD 'pw-{method}'")
        cursor.execute("RESET password_encryption")
        cursor.execute(f"GRANT SELECT ON users TO u_{method}")
    # A password that is not UTF-8 (Latin-1 "café"), stored as md5(password + user).
    digest = hashlib.md5(LATIN1_PASSWORD + b"u_latin1").hexdigest()  # noqa: S324 - md5 auth
    cursor.execute("DROP ROLE IF EXISTS u_latin1")
    cursor.execute(f"CREATE ROLE u_latin1 LOGIN PASSWORD 'md5{digest}'")
    cursor.execute("GRANT SELECT ON users TO u_latin1")
    conn.close()
    server.set_hba(
        [
            "local all all trust",
            "host all u_trust 127.0.0.1/32 trust",
            "host all u_password 127.0.0.1/32 password",
            "host all u_md5 127.0.0.1/32 md5",
            "host all u_latin1 127.0.0.1/32 md5",
            "hostnossl all u_cert 127.0.0.1/32 reject",
            "hostssl all u_cert 127.0.0.1/32 cert",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
    )
    yield server
    server.stop("immediate")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "query", "served"),
    [
        ("scram", "sslmode=require&channel_binding=require", True),  # SCRAM-SHA-256-PLUS
        ("scram", "sslmode=require&channel_binding=prefer", True),
        ("scram", "sslmode=require&channel_binding=disable", True),
        ("scram", "sslmode=disable&require_auth=scram-sha-256", True),
        ("md5", "sslmode=require&channel_binding=require", False),
        ("password", "sslmode=require&channel_binding=require", False),
        ("trust", "sslmode=require&channel_binding=require", False),
        ("md5", "sslmode=require&require_auth=scram-sha-256", False),
        ("password", "sslmode=require&require_auth=!password", False),
        ("trust", "sslmode=require&require_auth=md5", False),
        ("md5", "sslmode=require&require_auth=md5,scram-sha-256", True),
        ("trust", "sslmode=require", True),
    ],
)
def test_authentication_rules_are_libpqs(tls_postgres, make_app, method, query, served):
    server = tls_postgres
    url = f"postgresql://u_{method}:pw-{method}@127.0.0.1:{server.port}/postgres?{query}"
    response = make_app(DATABASE_URL=url).test_client().get("/")
    body = response.get_data(as_text=True)
    if served:
        assert response.status_code == 200, body
        assert len(response.get_json()["users"]) == 2
    else:
        assert response.status_code == 500, body
        error = response.get_json()["error"]
        assert error["code"] == "configuration_error"
        assert ("channel_binding" if "channel_binding" in query else "require_auth") in body
        assert f"pw-{method}" not in body


@pytest.mark.slow
@pytest.mark.parametrize("query", ["", "sslmode=allow", "sslmode=prefer", "sslmode=require"])
def test_a_client_certificate_is_presented_whenever_tls_is_used(tls_postgres, make_app, query):
    """libpq sends sslcert in every mode that uses TLS (allow: after the server refused the
    plaintext login), so `cert` authentication works without sslmode=require."""
    base = tls_postgres.base
    url = (
        f"postgresql://u_cert@127.0.0.1:{tls_postgres.port}/postgres?sslcert={base}/client.crt"
        f"&sslkey={base}/client.key&{query}"
    )
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["users"]) == 2


@pytest.mark.slow
def test_a_server_asking_for_a_password_the_url_lacks_is_a_configuration_error(
    tls_postgres, make_app
):
    url = f"postgresql://u_scram@127.0.0.1:{tls_postgres.port}/postgres?sslmode=disable"
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 500, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "configuration_error" and "no password" in error["message"]


@pytest.mark.slow
def test_a_password_that_is_not_utf8_logs_in_as_libpq_sends_it(tls_postgres, make_app):
    url = f"postgresql://u_latin1:caf%E9@127.0.0.1:{tls_postgres.port}/postgres?sslmode=disable"
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.slow
def test_an_abstract_socket_host_is_dialled_as_one(admin, postgres, make_app):
    """A host starting with '@' is a socket in Linux's abstract namespace (libpq)."""
    insert_users(admin, ROWS)
    name = f"pgtest-{os.getpid()}-{time.monotonic_ns()}"
    relay = Relay((postgres.host, postgres.port), unix_path=f"\0{name}/.s.PGSQL.5999")
    try:
        url = postgres.url(host=f"%40{name}", port=5999, query="sslmode=disable")
        response = make_app(DATABASE_URL=url).test_client().get("/")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["users"][0]["email"] == "a@example.com"
    finally:
        relay.close()


def test_hostaddr_dials_tcp_even_when_host_is_a_socket_directory(admin, postgres, make_app):
    insert_users(admin, ROWS)
    url = postgres.url(host="%2Fno%2Fsuch%2Fdir", query=f"hostaddr={postgres.host}&sslmode=disable")
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 200, response.get_data(as_text=True)


def test_options_names_are_folded_as_the_server_folds_them(admin, postgres, make_app):
    """`-c search-path=x` is the server's search_path (a startup parameter named
    `search-path` would be refused with 42704)."""
    cursor = admin.cursor()
    cursor.execute("DROP SCHEMA IF EXISTS folded CASCADE")
    cursor.execute("CREATE SCHEMA folded")
    cursor.execute("CREATE TABLE folded.users (LIKE public.users INCLUDING ALL)")
    cursor.execute("INSERT INTO folded.users (email, name) VALUES ('folded@example.com', 'F')")
    try:
        url = postgres.url(query="sslmode=disable&options=-c%20search-path%3Dfolded")
        response = make_app(DATABASE_URL=url).test_client().get("/")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert [u["email"] for u in response.get_json()["users"]] == ["folded@example.com"]
    finally:
        cursor.execute("DROP SCHEMA folded CASCADE")


def test_channel_binding_require_refuses_scram_without_tls(admin, postgres, make_app):
    """The wheel's server has no TLS: SCRAM, but never -PLUS."""
    url = postgres.url(query="channel_binding=require")
    response = make_app(DATABASE_URL=url).test_client().get("/")
    assert response.status_code == 500
    assert "'scram-sha-256'" in response.get_json()["error"]["message"]


def test_sockets_carry_the_urls_keepalive_timings(admin, postgres, make_app):
    url = postgres.url() + (
        "&keepalives_idle=7&keepalives_interval=2&keepalives_count=4&tcp_user_timeout=6000"
    )
    make_app(DATABASE_URL=url).test_client().get("/")
    import main

    conn = main.DB.checkout()
    try:
        sock = conn.dbapi_connection._usock
        options = [
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        ]
    finally:
        main.DB.release(conn)
    assert options == [1, 7, 2, 4, 6000]


# --- misconfigurations ----------------------------------------------------------------------


@pytest.fixture
def reader(admin):
    """A role that can read only id and email of users."""
    cursor = admin.cursor()
    cursor.execute("DROP ROLE IF EXISTS narrow_reader")
    cursor.execute("CREATE ROLE narrow_reader LOGIN PASSWORD 'narrow-pw'")
    cursor.execute("GRANT SELECT (id, email) ON users TO narrow_reader")
    insert_users(admin, ROWS)
    yield "narrow_reader:narrow-pw"
    cursor.execute("DROP OWNED BY narrow_reader")
    cursor.execute("DROP ROLE narrow_reader")


@pytest.mark.parametrize(
    ("login", "db", "env", "fix"),
    [
        ("{user}:wrong", "{db}", {}, "check the user and password"),
        ("nobody_here:pw", "{db}", {}, "check the user and password"),
        ("{admin}", "no_such_db", {}, "the database does not exist"),
        ("{reader}", "{db}", {}, "grant the function's role SELECT"),
        ("{reader}", "{db}", {"USERS_COLUMNS": "id,email"}, None),  # granted: served
        ("{admin}", "{db}", {"USERS_COLUMNS": "id,nickname"}, "nickname"),
        ("{admin}", "{db}", {"_host": "db.invalid"}, "does not resolve"),
        ("{admin}", "{db}", {"_query": "&options=-c%20no_such%3D1"}, "does not know a setting"),
    ],
)
def test_misconfigurations_are_500_naming_the_fix(postgres, make_app, reader, login, db, env, fix):
    """{admin}: the test server's superuser, whatever TEST_DATABASE_URL names."""
    host = env.pop("_host", f"{postgres.host}:{postgres.port}")
    login = login.format(reader=reader, admin=postgres.login, user=postgres.login.split(":")[0])
    url = f"postgresql://{login}@{host}/{db.format(db=postgres.database)}?{postgres.query}"
    client = make_app(DATABASE_URL=url + env.pop("_query", ""), **env).test_client()
    for _ in range(2):  # and again: still a configuration error, not an outage
        response = client.get("/")
        if fix is None:
            assert response.status_code == 200
            continue
        assert response.status_code == 500, response.get_data(as_text=True)
        assert "Retry-After" not in response.headers
        error = response.get_json()["error"]
        assert error["code"] == "configuration_error"
        assert fix in error["message"]
        assert "wrong" not in error["message"] and "narrow-pw" not in error["message"]


def test_a_missing_table_is_a_configuration_error(admin, postgres, make_app):
    admin.cursor().execute("DROP TABLE users")
    response = make_app().test_client().get("/")
    assert response.status_code == 500
    assert "does not exist" in response.get_json()["error"]["message"]


def test_hostaddr_dials_the_address_and_keeps_the_name(admin, postgres, make_app):
    """libpq's hostaddr: no name lookup (db.invalid never resolves), the name still names it."""
    insert_users(admin, ROWS)
    url = postgres.url(host="db.invalid", query=f"hostaddr=127.0.0.1&{postgres.query}")
    assert make_app(DATABASE_URL=url).test_client().get("/").status_code == 200


def test_the_urls_schema_names_the_table(admin, postgres, make_app):
    """Prisma's `schema`: the function serves that schema's users, not the search_path's."""
    insert_users(admin, ROWS)  # public.users
    cursor = admin.cursor()
    cursor.execute("DROP SCHEMA IF EXISTS tenant_a CASCADE")
    cursor.execute("CREATE SCHEMA tenant_a")
    cursor.execute("CREATE TABLE tenant_a.users (LIKE public.users INCLUDING ALL)")
    cursor.execute(
        "INSERT INTO tenant_a.users (id, email, name, created_at) OVERRIDING SYSTEM VALUE "
        "VALUES (7, 'b@tenant-a.example', 'B', '2024-01-02T00:00:00Z')"
    )
    try:
        url = postgres.url() + "&schema=tenant_a"
        response = make_app(DATABASE_URL=url).test_client().get("/")
        assert response.status_code == 200
        assert [u["email"] for u in response.get_json()["users"]] == ["b@tenant-a.example"]
        missing = make_app(DATABASE_URL=url.replace("tenant_a", "tenant_b")).test_client().get("/")
        assert missing.status_code == 500
        assert '"tenant_b"."users"' in missing.get_json()["error"]["message"]
    finally:
        cursor.execute("DROP SCHEMA tenant_a CASCADE")
