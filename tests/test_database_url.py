"""DATABASE_URL as hosted PostgreSQL hands it out: each shape accepted with libpq's meaning,
or refused with a message that says why. Fake hosts: nothing here connects."""

from __future__ import annotations

import ssl

import pytest

from lib.config import ConfigError, load
from lib.database_url.uri import Host, Keepalives, parse
from tests.test_tls import make_ca, pem

PW = "s3cr%40t"  # percent-encoded '@'


@pytest.fixture(scope="module")
def rds_bundle(tmp_path_factory):
    """Stands in for AWS's global-bundle.pem: any readable CA file."""
    path = tmp_path_factory.mktemp("rds") / "global-bundle.pem"
    path.write_bytes(pem(make_ca("rds test CA")[1]))
    return path


# (provider, URL, what it must mean). `pooler` is True when the shape is a transaction pooler.
SHAPES = [
    (
        "Neon",
        f"postgresql://alex:{PW}@ep-cool-darkness-123456.us-east-2.aws.neon.tech/dbname"
        "?sslmode=require&channel_binding=require",
        {
            "host": "ep-cool-darkness-123456.us-east-2.aws.neon.tech",
            "port": 5432,
            "sslmode": "require",
            "channel_binding": "require",
            "pooler": False,
        },
    ),
    (
        "Neon pooled",
        f"postgresql://alex:{PW}@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/dbname"
        "?sslmode=require&channel_binding=require",
        {"sslmode": "require", "channel_binding": "require", "pooler": True},
    ),
    (
        "Neon without SNI (options=endpoint)",
        f"postgresql://alex:{PW}@ep-cool-darkness-123456.us-east-2.aws.neon.tech/dbname"
        "?sslmode=require&options=endpoint%3Dep-cool-darkness-123456",
        {"options": {"options": "endpoint=ep-cool-darkness-123456"}, "pooler": False},
    ),
    (
        "Supabase direct",
        f"postgresql://postgres:{PW}@db.abcdefghijklmnopqrst.supabase.co:5432/postgres",
        {"host": "db.abcdefghijklmnopqrst.supabase.co", "sslmode": "prefer", "pooler": False},
    ),
    (
        "Supabase session pooler",
        f"postgresql://postgres.abcdefghijklmnopqrst:{PW}@aws-0-us-east-1.pooler.supabase.com"
        ":5432/postgres",
        {"user": "postgres.abcdefghijklmnopqrst", "pooler": False},
    ),
    (
        "Supabase transaction pooler",
        f"postgresql://postgres.abcdefghijklmnopqrst:{PW}@aws-0-us-east-1.pooler.supabase.com"
        ":6543/postgres",
        {"port": 6543, "pooler": True},
    ),
    (
        "Supabase transaction pooler, Prisma style",
        f"postgresql://postgres.abcdefghijklmnopqrst:{PW}@aws-0-us-east-1.pooler.supabase.com"
        ":6543/postgres?pgbouncer=true&connection_limit=1",
        {"pooler": True, "ignored": ["connection_limit"]},
    ),
    (
        "Heroku",
        f"postgres://u1a2b3:{PW}@ec2-3-210-12-34.compute-1.amazonaws.com:5432/d9f8e7",
        {"database": "d9f8e7", "pooler": False},
    ),
    (
        "Render (external)",
        f"postgresql://app_user:{PW}@dpg-abc123def456-a.oregon-postgres.render.com/app_db",
        {"port": 5432, "pooler": False},
    ),
    (
        "Render (internal)",
        f"postgresql://app_user:{PW}@dpg-abc123def456-a/app_db",
        {"host": "dpg-abc123def456-a"},
    ),
    (
        "Railway",
        f"postgresql://postgres:{PW}@roundhouse.proxy.rlwy.net:34567/railway",
        {"port": 34567, "database": "railway"},
    ),
    (
        "Aiven",
        f"postgres://avnadmin:{PW}@pg-3b8d4e-myproject.a.aivencloud.com:12691/defaultdb"
        "?sslmode=require",
        {"sslmode": "require", "port": 12691},
    ),
    (
        "DigitalOcean",
        f"postgresql://doadmin:{PW}@db-postgresql-nyc3-12345-do-user-1-0.b.db.ondigitalocean.com"
        ":25060/defaultdb?sslmode=require",
        {"port": 25060, "pooler": False},
    ),
    (
        "DigitalOcean connection pool",
        f"postgresql://doadmin:{PW}@db-postgresql-nyc3-12345-do-user-1-0.b.db.ondigitalocean.com"
        ":25061/mypool?sslmode=require",
        {"port": 25061, "database": "mypool", "pooler": True},
    ),
    (
        "Crunchy Bridge",
        f"postgres://application:{PW}@p.vbjrfujv5beutaoelw725gvi3i.db.postgresbridge.com:5432"
        "/postgres",
        {"user": "application"},
    ),
    (
        "AWS RDS, verify-full with the bundle",
        f"postgresql://app:{PW}@mydb.c9akciq32.us-east-1.rds.amazonaws.com:5432/postgres"
        "?sslmode=verify-full&sslrootcert={bundle}",
        {"sslmode": "verify-full", "verify": "full"},
    ),
    (
        "Azure",
        f"postgresql://app:{PW}@myserver.postgres.database.azure.com:5432/postgres?sslmode=require",
        {"sslmode": "require", "pooler": False},
    ),
    (
        "Azure's built-in PgBouncer",
        f"postgresql://app:{PW}@myserver.postgres.database.azure.com:6432/postgres?sslmode=require",
        {"port": 6432, "pooler": True},
    ),
    (
        "Cloud SQL Auth Proxy, Unix socket",
        f"postgresql://app:{PW}@/appdb?host=/cloudsql/my-proj:us-central1:main",
        {"socket": "/cloudsql/my-proj:us-central1:main/.s.PGSQL.5432", "port": 5432},
    ),
    (
        "Cloud SQL Auth Proxy, TCP",
        f"postgresql://app:{PW}@127.0.0.1:5432/appdb",
        {"host": "127.0.0.1", "sslmode": "prefer"},
    ),
    (
        "libpq everything",
        f"postgresql://app:{PW}@h1:5433,[2001:db8::1]:5434,%2Fvar%2Frun%2Fpg/appdb"
        "?connect_timeout=7&application_name=billing&target_session_attrs=prefer-standby"
        "&load_balance_hosts=random&keepalives_idle=30&keepalives_interval=3"
        "&keepalives_count=4&tcp_user_timeout=9000&gssencmode=disable&sslnegotiation=postgres"
        "&client_encoding=UTF8&options=-c%20TimeZone%3DEurope/Paris%20--search-path%3Dapp",
        {
            "hosts": (Host("h1", 5433), Host("2001:db8::1", 5434), Host("/var/run/pg", 5432)),
            "connect_timeout": 7.0,
            "application_name": "billing",
            "target_session_attrs": "prefer-standby",
            "load_balance_hosts": "random",
            "keepalives": Keepalives(30, 3, 4, 9000),
            "options": {"TimeZone": "Europe/Paris", "search_path": "app"},
        },
    ),
    (
        "query-string overrides (libpq)",
        "postgresql:///ignored?host=h1,h2&port=6000&user=u&password=p%20w&dbname=real",
        {
            "hosts": (Host("h1", 6000), Host("h2", 6000)),
            "user": "u",
            "password": "p w",
            "database": "real",
        },
    ),
    (
        "node-postgres no-verify",
        f"postgres://app:{PW}@h/db?sslmode=no-verify",
        {"sslmode": "require", "verify": "none"},
    ),
]


@pytest.mark.parametrize(("provider", "raw", "meaning"), SHAPES, ids=[s[0] for s in SHAPES])
def test_provider_shapes_mean_what_they_say(provider, raw, meaning, rds_bundle):
    url = parse(raw.replace("{bundle}", str(rds_bundle)))
    assert url.password in ("s3cr@t", "p w")
    host = url.hosts[0]
    expected = {
        "host": host.name,
        "port": host.port,
        "socket": host.socket_path,
        "hosts": url.hosts,
        "user": url.user,
        "password": url.password,
        "database": url.database,
        "sslmode": url.sslmode,
        "ssl_context": url.ssl_context,
        "channel_binding": url.channel_binding,
        "pooler": url.pooler is not None,
        "options": url.options,
        "ignored": [entry.split(" ")[0] for entry in url.ignored],
        "connect_timeout": url.connect_timeout,
        "application_name": url.application_name,
        "target_session_attrs": url.target_session_attrs,
        "load_balance_hosts": url.load_balance_hosts,
        "keepalives": url.keepalives,
    }
    if meaning.get("verify") == "full":
        assert url.ssl_context.check_hostname and url.ssl_context.verify_mode == ssl.CERT_REQUIRED
    if meaning.get("verify") == "none":
        assert url.ssl_context.verify_mode == ssl.CERT_NONE
    assert {key: expected[key] for key in meaning if key != "verify"} == {
        key: value for key, value in meaning.items() if key != "verify"
    }


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("sslmode=verify", "sslmode 'verify'"),
        ("connect_timout=3", "unknown parameter 'connect_timout'"),
        ("channel_binding=required", "channel_binding 'required'"),
        ("sslmode=disable&channel_binding=require", "needs TLS"),
        ("gssencmode=require", "no GSSAPI"),
        ("sslnegotiation=direct", "sslnegotiation=direct"),
        ("client_encoding=LATIN1", "pg8000 speaks UTF8"),
        ("target_session_attrs=replica", "target_session_attrs 'replica'"),
        ("options=-c%20statement_timeout%3D0", "use DB_STATEMENT_TIMEOUT_MS"),
        ("options=-c%20default_transaction_read_only%3Doff", "only reads, by design"),
        ("options=--idle-session-timeout%3D0", "use DB_IDLE_TIMEOUT"),
        ("options=-c%20nothing", "needs name=value"),
        ("passfile=/root/.pgpass", "put the password in the URL"),
        ("service=prod", "pg_service.conf"),
        ("ssl=false", "only ssl=true"),
        ("require_auth=md5,!password", "all with or all without"),
        ("keepalives_idle=ten", "not a whole number"),
        ("port=99999", "not a TCP port"),
        ("options=-c%20a=b", "second '='"),
        ("sslrootcert=system&sslmode=require", "too weak for sslrootcert=system"),
        ("port=%zz", "invalid percent-encoding"),
        ("options=-ec%20statement_timeout%3D1", "use DB_STATEMENT_TIMEOUT_MS"),
        ("options=-c%20statement-timeout%3D1", "use DB_STATEMENT_TIMEOUT_MS"),
        ("min_protocol_version=3.2", "pg8000 speaks protocol 3.0"),
        ("oauth_issuer=https%3A%2F%2Fx", "no OAuth"),
        ("schema=Public;drop", "not a plain lower-case identifier"),
        ("x" * 5000 + "=1", "unknown parameter 'xxxxxxxx"),
    ],
)
def test_what_cannot_be_honoured_is_refused_in_one_line(query, fragment):
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        parse(f"postgresql://a:b@h/db?{query}")
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message and len(message) < 700  # no echo of unbounded input


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("postgresql://a:b@[::1/db", "without its"),
        ("postgresql://a:b@[]/db", "empty IPv6"),
        ("postgresql://a:b@h 1/db", "unencoded space"),
        ("postgresql://a:b@h1,h2,h3/db?port=1,2", "2 port numbers to 3 hosts"),
        ("mysql://a:b@h/db", "scheme 'mysql'"),
        ("not a url", "is not a URL"),
    ],
)
def test_malformed_host_lists_are_configuration_errors_not_tracebacks(raw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse(raw)


def test_require_auth_lists_and_negations():
    assert parse("postgresql://a@h/db?require_auth=scram-sha-256").require_auth == {"scram-sha-256"}
    assert parse("postgresql://a@h/db?require_auth=!password,!md5").require_auth == {
        "gss",
        "sspi",
        "scram-sha-256",
        "oauth",
        "none",
    }


def test_keepalives_are_on_by_default_and_can_be_switched_off():
    assert parse("postgresql://a@h/db").keepalives == Keepalives(10, 5, 3, 0)
    assert parse("postgresql://a@h/db?keepalives=0").keepalives is None


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        (
            {"DATABASE_URL": "postgresql://a@h/db?connect_timeout=3", "DB_CONNECT_TIMEOUT": "5"},
            "DATABASE_URL",
            "disagrees with DB_CONNECT_TIMEOUT",
        ),
        (
            {"DATABASE_URL": "postgresql://a@h/db?application_name=x", "DB_APPLICATION_NAME": "y"},
            "DATABASE_URL",
            "application_name is set twice",
        ),
        (
            {"DATABASE_URL": "postgresql://a@h:6543/db", "DB_TRANSACTION_POOLER": "false"},
            "DB_TRANSACTION_POOLER",
            "port 6543",
        ),
        (
            {"DATABASE_URL": "postgresql://a@h/db", "DB_TRANSACTION_POOLER": "maybe"},
            "DB_TRANSACTION_POOLER",
            "'maybe' is not true or false",
        ),
    ],
)
def test_the_url_and_the_variables_never_silently_override_each_other(env, variable, fragment):
    with pytest.raises(ConfigError, match=variable) as caught:
        load(env)
    assert fragment in str(caught.value)


def test_url_settings_flow_into_settings():
    settings = load(
        {
            "DATABASE_URL": "postgresql://a@h/db?connect_timeout=0&fallback_application_name=etl",
            "DB_CONNECT_TIMEOUT": "4",
        }
    )
    assert settings.connect_timeout == 4.0  # 0 means "the default" (libpq)
    assert settings.application_name == "etl"
    assert (
        load({"DATABASE_URL": "postgresql://a@h/db?connect_timeout=1"}).connect_timeout == 1.0
    )  # libpq 18: 1 is 1
    assert load({"DATABASE_URL": "postgresql://a@h/db"}).transaction_pooler is None  # auto
    assert load({"DATABASE_URL": "postgresql://a@h/db?pgbouncer=true"}).transaction_pooler


def test_other_clients_keys_are_logged_once_as_ignored(admin, postgres, make_app, capsys):
    url = postgres.url() + "&connection_limit=1&statement_cache_size=0"
    assert make_app(DATABASE_URL=url).test_client().get("/").status_code == 200
    lines = [line for line in capsys.readouterr().out.splitlines() if "ignored" in line]
    assert len(lines) == 1
    assert "connection_limit (the pool size is DB_POOL_SIZE)" in lines[0]
    assert "statement_cache_size" in lines[0]


# What libpq 18 reads, case by case (tests/test_libpq_oracle.py checks the same against libpq).
@pytest.mark.parametrize(
    ("raw", "field", "meaning"),
    [
        ("postgresql://u:caf%E9@h/db", "password", "caf\udce9"),  # the byte 0xE9, not U+FFFD
        ("postgresql://u@h/%FF", "database", "\udcff"),
        ("postgresql://u:pa?ss@h/db", "password", "pa?ss"),
        ("postgresql://app:p@ss@h/db", "password", "p@ss"),  # the one deviation (docs)
        ("postgresql://u@h/db?sslmode=require&", "sslmode", "require"),
        ("postgresql://u@h/db?sslmode=require&sslmode=disable", "sslmode", "disable"),
        ("postgresql://u@h/db?ssl=true", "sslmode", "require"),
        ("postgresql://u@h/db?requiressl=1", "sslmode", "require"),
        ("postgresql://u@h/db?sslrootcert=system", "sslmode", "verify-full"),
        ("postgresql://u@h/db? sslmode = require ", "sslmode", "require"),
        ("postgresql://u@ h1,h2 /db", "hosts", (Host("h1", 5432), Host("h2", 5432))),
        ("postgresql://u@[/tmp/pg]:6000/db", "hosts", (Host("/tmp/pg", 6000),)),
        ("postgresql://u@%40abstract/db", "hosts", (Host("@abstract", 5432),)),
        ("postgresql://u@/db?hostaddr=10.1.2.3", "hosts", (Host("10.1.2.3", 5432, "10.1.2.3"),)),
        ("postgresql://u@h1,/db", "hosts", (Host("h1", 5432), Host("/var/run/postgresql", 5432))),
        ("postgresql://u@h:+5432/db", "hosts", (Host("h", 5432),)),
        ("postgresql://u@h/db?port=%205433%20", "hosts", (Host("h", 5433),)),
        ("postgresql://u@h/db?connect_timeout=-3", "connect_timeout", None),
        ("postgresql://u@h/db?connect_timeout=001", "connect_timeout", 1.0),  # libpq 18
        ("postgresql://u@h/db?keepalives=7", "keepalives", Keepalives()),
        ("postgresql://u@h/db?keepalives_idle=+011", "keepalives", Keepalives(idle=11)),
        ("postgresql://u@h/db?application_name=My%20App", "application_name", "My App"),
        ("postgresql://u@h/db?require_auth=", "require_auth", None),
        ("postgresql://u@h/db?require_auth=oauth", "require_auth", {"oauth"}),
        ("postgresql://u@h/db?sslsni=yes", "sslsni", False),  # only a leading '1' means on
        ("postgresql://u@h/db?client_encoding=", "database", "db"),
        ("postgresql://u@h/db?client_encoding=utf_8", "database", "db"),
        ("postgresql://u@h", "database", "u"),  # libpq: the database defaults to the user
        ("postgresql://u@h/db?sslmode=require&sslcert=/no/such.crt", "sslmode", "require"),
        ("postgresql://u@h/db?sslkeylogfile=/tmp/keys&max_protocol_version=3.2", "user", "u"),
        ("postgresql://u@h/db?options=-c%20search-path%3Dx", "options", {"search_path": "x"}),
        ("postgresql://u@h/db?options=--search-path%3Dx", "options", {"search_path": "x"}),
        (
            "postgresql://u@h/db?options=-c%20search_path%3Da%5C%20b%5C%09c",
            "options",
            {"search_path": "a b\tc"},  # a backslash keeps a space or tab inside the word
        ),
        (
            "postgresql://u@h/db?options=-c%20search_path%3Da%C2%A0b",
            "options",
            {"search_path": "a\u00a0b"},  # NBSP separates nothing
        ),
        (
            "postgresql://u@h/db?options=-e%20endpoint%3Dep-1",
            "options",
            {"options": "-e endpoint=ep-1"},
        ),
    ],
)
def test_uris_mean_what_libpq_reads(raw, field, meaning):
    value = getattr(parse(raw), field)
    assert value == meaning


def test_a_url_without_user_logs_in_as_the_os_user_as_libpq():
    import getpass

    url = parse("postgresql:///")
    assert url.user == getpass.getuser() and url.database == url.user
    assert url.hosts == (Host("/var/run/postgresql", 5432),)
