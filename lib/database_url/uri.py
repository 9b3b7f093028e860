"""DATABASE_URL: a libpq connection URI, read with libpq's meaning and mapped to pg8000.

Hosted PostgreSQL hands out libpq URIs (Neon, Supabase, Heroku, RDS, Azure...) carrying
parameters pg8000 has never heard of. Each one here is honoured with libpq 18's meaning, or
refused in one line that names it and says why; none is silently dropped. The source of
truth is libpq itself: tests/test_libpq_oracle.py compares this module with libpq's own
parser on PostgreSQL's URI tests, providers' URLs and generated cases. The deviations are
listed in docs/connection-strings.md. Reference:
https://www.postgresql.org/docs/current/libpq-connect.html (32.1.1 and 32.1.2).

The URI is split by lib/database_url/lexer.py, `options` by options.py and TLS read by
tls.py; this module gives the keywords their meaning and refuses what cannot be honoured.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import ssl
from dataclasses import dataclass, field

from lib.database_url.lexer import C_SPACE, choice, invalid, uri_values, wire
from lib.database_url.options import parse_options
from lib.database_url.tls import tls
from lib.errors import excerpt
from lib.names import PLAIN_IDENTIFIER
from lib.postgres import driver

TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
AUTH_METHODS = ("password", "md5", "gss", "sspi", "scram-sha-256", "oauth", "none")
PROTOCOL_VERSIONS = ("3.0", "3.2", "latest")
DEFAULT_SOCKET_DIR = "/var/run/postgresql"  # libpq's compiled default (Debian, psycopg's wheel)
# Keys of other clients' URLs (Prisma, node-postgres, JDBC) that mean nothing to a libpq
# client (libpq refuses them); accepted so a URL can be pasted as it is, logged as ignored.
IGNORED = {
    "connection_limit": "the pool size is DB_POOL_SIZE",
    "pool_timeout": "the pool timeout is DB_POOL_TIMEOUT",
    "socket_timeout": "reads are bounded by DB_STATEMENT_TIMEOUT_MS + DB_CONNECT_TIMEOUT",
    "statement_cache_size": "the function prepares no statements",
    "sslaccept": "TLS verification is sslmode's",
    "sslidentity": "use sslcert and sslkey",
}
# libpq keywords that the driver or Python cannot honour: refused, saying why.
REFUSED = {
    **driver.CANNOT,
    "passfile": "put the password in the URL (from Secret Manager) instead",
    "service": "there is no pg_service.conf on Cloud Run; spell the parameters out",
    "servicefile": "there is no pg_service.conf on Cloud Run; spell the parameters out",
    "requirepeer": "Unix peer credentials are not checked by the function",
    "sslcrl": "Python's ssl module is given no revocation lists here; use sslrootcert",
    "sslcrldir": "Python's ssl module is given no revocation lists here; use sslrootcert",
    "replication": "the function does not stream replication",
}
SUPPORTED = (
    *("host", "hostaddr", "port", "dbname", "user", "password", "connect_timeout"),
    *("client_encoding", "options", "application_name", "fallback_application_name"),
    *("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"),
    *("tcp_user_timeout", "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"),
    *("sslcertmode", "sslnegotiation", "sslsni", "sslcompression", "sslkeylogfile"),
    *("ssl_min_protocol_version", "ssl_max_protocol_version", "channel_binding"),
    *("require_auth", "gssencmode", "target_session_attrs", "load_balance_hosts"),
    *("min_protocol_version", "max_protocol_version"),
    # Not libpq's: the pooler flag of Prisma's URLs, a schema for the served table, pg8000's
    # socket spelling.
    *("pgbouncer", "schema", "unix_sock"),
)
_STRTOL = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Host:
    """One server to try: a host name or IP; a Unix socket directory (starts with /); or a
    Linux abstract socket (starts with @)."""

    name: str
    port: int
    addr: str | None = None  # libpq's hostaddr: the IP dialled; `name` still names the server

    @property
    def socket_path(self) -> str | None:
        """The socket to connect to, or None for TCP (hostaddr always dials TCP, as libpq)."""
        if self.addr or not self.name.startswith(("/", "@")):
            return None
        path = f"{self.name.rstrip('/')}/.s.PGSQL.{self.port}"
        return "\0" + path[1:] if path.startswith("@") else path

    def __str__(self) -> str:
        return (self.socket_path or f"{self.name}:{self.port}").replace("\0", "@")


@dataclass(frozen=True)
class Keepalives:
    """TCP keepalive and user timeout for each socket (0 = the kernel's default). pg8000 only
    switches keepalive on, with Linux's 2-hour idle: a dead NAT path would go unnoticed."""

    idle: int = 10
    interval: int = 5
    count: int = 3
    user_timeout_ms: int = 0


@dataclass(frozen=True)
class DatabaseUrl:
    """What DATABASE_URL says, validated. `repr` shows no password."""

    hosts: tuple[Host, ...]
    user: str
    password: str | None = field(repr=False)
    database: str
    sslmode: str = "prefer"
    # TLS settings for every mode but disable (certificates checked only by verify-*).
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    sslnegotiation: str = "postgres"  # or "direct": TLS from the first byte (PostgreSQL 17+)
    sslsni: bool = True
    channel_binding: str = "prefer"
    require_auth: frozenset[str] | None = None  # allowed methods; None: any
    connect_timeout: float | None = None
    application_name: str | None = None
    fallback_application_name: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # startup parameters from `options`
    keepalives: Keepalives | None = Keepalives()
    target_session_attrs: str = "any"
    load_balance_hosts: str = "disable"
    pooler: str | None = None  # why the URL says a transaction pooler is in front
    schema: str | None = None
    ignored: tuple[str, ...] = ()  # other clients' keys, with why they mean nothing here


def parse(raw: str) -> DatabaseUrl:
    """Parse a libpq URI: `postgresql://[user[:password]@][host[:port][,...]][/dbname][?k=v&...]`."""
    return _validate(uri_values(raw))


def _validate(v: dict[str, str]) -> DatabaseUrl:
    for key in v:
        if key in REFUSED:
            raise invalid(f"'{key}' is not supported: {REFUSED[key]}")
        if key not in SUPPORTED and key not in IGNORED and key not in ("user", "password"):
            raise invalid(
                f"unknown parameter '{excerpt(key)}'; supported: {', '.join(SUPPORTED)} "
                "(see docs/connection-strings.md)"
            )
    user = v.get("user") or _os_user()
    hosts = _hosts(v)
    channel_binding = choice(v, "channel_binding", ("disable", "prefer", "require"), "prefer")
    sslmode, context = tls(v)
    if channel_binding == "require" and sslmode == "disable":
        raise invalid("channel_binding=require with sslmode=disable is not supported: it needs TLS")
    if choice(v, "gssencmode", ("disable", "prefer", "require"), "prefer") == "require":
        raise invalid("gssencmode=require is not supported: pg8000 has no GSSAPI encryption")
    _client_encoding(v.get("client_encoding", ""))
    _protocol_versions(v)
    pooler = None
    if "pgbouncer" in v:
        if choice(v, "pgbouncer", ("true", "false"), "false") == "true":
            pooler = "pgbouncer=true in DATABASE_URL"
    else:
        pooler = known_pooler(hosts)
    schema = v.get("schema")
    if schema is not None and not PLAIN_IDENTIFIER.fullmatch(schema):
        raise invalid(f"schema '{excerpt(schema)}' is not a plain lower-case identifier")
    return DatabaseUrl(
        hosts=hosts,
        user=user,
        password=v.get("password") or None,
        database=v.get("dbname") or user,
        sslmode=sslmode,
        ssl_context=context,
        sslnegotiation=v.get("sslnegotiation", "postgres"),
        sslsni=v.get("sslsni", "1").startswith("1"),
        channel_binding=channel_binding,
        require_auth=_require_auth(v.get("require_auth")),
        connect_timeout=_connect_timeout(v.get("connect_timeout")),
        application_name=v.get("application_name") or None,
        fallback_application_name=v.get("fallback_application_name") or None,
        options=parse_options(v.get("options", "")),
        keepalives=_keepalives(v),
        target_session_attrs=choice(v, "target_session_attrs", TARGET_SESSION_ATTRS, "any"),
        load_balance_hosts=choice(v, "load_balance_hosts", ("disable", "random"), "disable"),
        pooler=pooler,
        schema=schema,
        ignored=tuple(f"{key} ({IGNORED[key]})" for key in v if key in IGNORED),
    )


def _os_user() -> str:
    """libpq's default user: the name of the operating-system user running the process."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise invalid("names no user, and this process's user has no name") from None


def _hosts(v: dict[str, str]) -> tuple[Host, ...]:
    """libpq's host, hostaddr and port lists; an empty host is the default socket directory,
    hostaddr alone names the server by its address."""
    if "unix_sock" in v:  # pg8000's own spelling: the socket file itself
        directory, _, name = v["unix_sock"].rpartition("/.s.PGSQL.")
        if not directory.startswith("/") or not name.isdigit() or "host" in v:
            raise invalid("unix_sock must be /dir/.s.PGSQL.<port>, without a host")
        return (Host(directory, int(name)),)
    addrs = v["hostaddr"].split(",") if v.get("hostaddr") else None
    names = v["host"].split(",") if v.get("host") else [""] * len(addrs or [""])
    if addrs is not None and len(addrs) != len(names):
        raise invalid(f"could not match {len(names)} host names to {len(addrs)} hostaddr values")
    ports = v.get("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(names)
    if len(ports) != len(names):
        raise invalid(f"could not match {len(ports)} port numbers to {len(names)} hosts")
    hosts = []
    for i, (name, port) in enumerate(zip(names, ports, strict=True)):
        addr = addrs[i] if addrs else ""
        if addr:
            try:  # what libpq takes: getaddrinfo with AI_NUMERICHOST, no look-up
                socket.getaddrinfo(addr, None, flags=socket.AI_NUMERICHOST)
            except (socket.gaierror, UnicodeError):
                raise invalid(f"hostaddr '{excerpt(addr)}' is not a numeric IP address") from None
        number = _strtol(port, "port") if port else 5432
        if not 0 < number < 65536:
            raise invalid(f"port '{excerpt(port)}' is not a TCP port number")
        host = Host(name or addr or DEFAULT_SOCKET_DIR, number, addr or None)
        if host.socket_path and len(wire(host.socket_path)) > 107:
            raise invalid(f"Unix socket path of {host.name!r} is too long (maximum 107 bytes)")
        hosts.append(host)
    return tuple(hosts)


def known_pooler(hosts: tuple[Host, ...]) -> str | None:
    """Recognise the transaction poolers hosted PostgreSQL hands out, by their address."""
    for host in hosts:
        name = host.name.lower()
        if host.port == 6543:
            return f"port 6543 of {host.name} (Supabase's transaction pooler)"
        if host.port == 6432:
            return f"port 6432 of {host.name} (PgBouncer's port, Azure's pooler)"
        if host.port == 25061 and name.endswith(".ondigitalocean.com"):
            return f"port 25061 of {host.name} (DigitalOcean's connection pool)"
        if re.search(r"-pooler\.[^.]+\.[^.]+\.neon\.tech$", name):
            return f"{host.name} (Neon's pooled endpoint)"
    return None


# The server's getopt string (postgres.c, process_postgres_switches): these flags take an
# argument, attached (`-cname=value`) or as the next word.


def _strtol(raw: str, key: str) -> int:
    """An integer as libpq's pqParseIntParam reads it (strtol: C spaces around, a sign,
    leading zeros; no more than fits an int)."""
    digits = raw.strip(C_SPACE)
    if not _STRTOL.fullmatch(digits) or not -(2**31) <= int(digits) < 2**31:
        raise invalid(f"{key} '{excerpt(raw)}' is not a whole number")
    return int(digits)


def _connect_timeout(raw: str | None) -> float | None:
    """Seconds; libpq reads 0, a negative value or nothing as "no limit" (here: the
    function's DB_CONNECT_TIMEOUT)."""
    if raw is None:
        return None
    seconds = _strtol(raw, "connect_timeout")
    return float(seconds) if seconds > 0 else None


def _keepalives(v: dict[str, str]) -> Keepalives | None:
    """Any non-zero `keepalives` switches them on. libpq sets each time it is given, and
    Linux refuses 0 (a negative value is read as 0); tcp_user_timeout 0 is the kernel's."""
    if "keepalives" in v and _strtol(v["keepalives"], "keepalives") == 0:
        return None
    default = Keepalives()

    def seconds(key: str, fallback: int) -> int:
        if key not in v:
            return fallback
        value = max(_strtol(v[key], key), 0)
        if value == 0 and key != "tcp_user_timeout":
            raise invalid(f"{key} {v[key]!r}: Linux refuses a value below 1 (libpq too)")
        return value

    return Keepalives(
        idle=seconds("keepalives_idle", default.idle),
        interval=seconds("keepalives_interval", default.interval),
        count=seconds("keepalives_count", default.count),
        user_timeout_ms=seconds("tcp_user_timeout", default.user_timeout_ms),
    )


def _require_auth(raw: str | None) -> frozenset[str] | None:
    """libpq's require_auth: a list of methods, or of `!method`s to forbid; empty: any."""
    if not raw:
        return None
    methods = raw.split(",")
    negated = {m.startswith("!") for m in methods}
    names = [m.removeprefix("!") for m in methods]
    if len(negated) != 1 or not all(n in AUTH_METHODS for n in names):
        raise invalid(
            f"require_auth '{excerpt(raw)}' must list methods of {', '.join(AUTH_METHODS)}, "
            "all with or all without '!'"
        )
    if len(set(names)) != len(names):
        raise invalid(f"require_auth '{excerpt(raw)}' names a method twice")
    return frozenset(set(AUTH_METHODS) - set(names) if True in negated else names)


def _client_encoding(raw: str) -> None:
    """pg8000 speaks UTF-8; the server's spellings of it (case and punctuation ignored)."""
    name = "".join(c for c in raw if c.isalnum()).lower()
    if name not in ("", "auto", *driver.ENCODINGS):
        raise invalid(f"client_encoding '{excerpt(raw)}' is not supported: pg8000 speaks UTF8")


def _protocol_versions(v: dict[str, str]) -> None:
    for key in ("min_protocol_version", "max_protocol_version"):
        choice(v, key, PROTOCOL_VERSIONS, driver.PROTOCOL)
    if v.get("min_protocol_version", driver.PROTOCOL) != driver.PROTOCOL:
        raise invalid(
            f"min_protocol_version above {driver.PROTOCOL} is not supported: pg8000 speaks "
            f"protocol {driver.PROTOCOL}"
        )
