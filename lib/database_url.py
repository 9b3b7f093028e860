"""DATABASE_URL: a libpq connection URI, read with libpq's meaning and mapped to pg8000.

Hosted PostgreSQL hands out libpq URIs (Neon, Supabase, Heroku, RDS, Azure...) carrying
parameters pg8000 has never heard of. Each one here is honoured with libpq's meaning, or
refused in one line that says why; none is silently dropped. Reference:
https://www.postgresql.org/docs/current/libpq-connect.html (34.1.1 and 34.1.2).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote

from lib.failures import ConfigError

SCHEMES = ("postgresql", "postgres", "postgresql+pg8000")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
AUTH_METHODS = ("password", "md5", "gss", "sspi", "scram-sha-256", "none")
# Session settings the function sets itself: a URL may not change them behind its back.
OWN_SETTINGS = {
    "statement_timeout": "DB_STATEMENT_TIMEOUT_MS",
    "idle_in_transaction_session_timeout": "DB_STATEMENT_TIMEOUT_MS",
    "idle_session_timeout": "DB_IDLE_TIMEOUT",
    "default_transaction_read_only": "nothing: the function only reads, by design",
    "transaction_read_only": "nothing: the function only reads, by design",
}
# Keys of other clients' URLs (Prisma, node-postgres, JDBC) that mean nothing to a libpq
# client; accepted so a URL can be pasted as it is, and logged once as ignored.
IGNORED = {
    "connection_limit": "the pool size is DB_POOL_SIZE",
    "pool_timeout": "the pool timeout is DB_POOL_TIMEOUT",
    "socket_timeout": "reads are bounded by DB_STATEMENT_TIMEOUT_MS + DB_CONNECT_TIMEOUT",
    "statement_cache_size": "the function prepares no statements",
    "sslaccept": "TLS verification is sslmode's",
    "sslidentity": "use sslcert and sslkey",
    "sslcompression": "PostgreSQL 14+ ignores it too",
}
REFUSED = {
    "passfile": "put the password in the URL (from Secret Manager) instead",
    "service": "there is no pg_service.conf on Cloud Run; spell the parameters out",
    "servicefile": "there is no pg_service.conf on Cloud Run; spell the parameters out",
    "requirepeer": "Unix peer credentials are not available to the function",
    "krbsrvname": "pg8000 has no GSSAPI/Kerberos",
    "gsslib": "pg8000 has no GSSAPI/Kerberos",
    "gssdelegation": "pg8000 has no GSSAPI/Kerberos",
    "sslcrl": "certificate revocation lists are not supported; use sslrootcert",
    "sslcrldir": "certificate revocation lists are not supported; use sslrootcert",
    "ssl_min_protocol_version": "not supported; Python's TLS defaults apply (TLS 1.2+)",
    "ssl_max_protocol_version": "not supported; Python's TLS defaults apply",
    "sslcertmode": "not supported; use sslcert and sslkey",
    "replication": "the function does not stream replication",
    "ssl": "ambiguous (true means different things to different clients): use sslmode",
}
SUPPORTED = (
    *("host", "hostaddr", "port", "dbname", "user", "password", "connect_timeout"),
    *("client_encoding", "options", "application_name", "fallback_application_name"),
    *("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"),
    *("tcp_user_timeout", "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"),
    *("sslnegotiation", "sslsni", "channel_binding", "require_auth", "gssencmode"),
    *("target_session_attrs", "load_balance_hosts", "pgbouncer", "schema", "unix_sock"),
)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _error(problem: str) -> ConfigError:
    return ConfigError("DATABASE_URL", problem)


@dataclass(frozen=True)
class Host:
    """One server to try: a host name or IP, or a Unix socket directory (starts with /)."""

    name: str
    port: int
    addr: str | None = None  # libpq's hostaddr: the IP dialled; `name` still names the server

    @property
    def socket_path(self) -> str | None:
        if not self.name.startswith("/"):
            return None
        return f"{self.name.rstrip('/')}/.s.PGSQL.{self.port}"

    def __str__(self) -> str:
        return self.socket_path or f"{self.name}:{self.port}"


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
    ssl_context: ssl.SSLContext | bool | None = field(default=None, repr=False)
    channel_binding: str = "prefer"
    require_auth: frozenset[str] | None = None  # allowed methods; None: any
    connect_timeout: float | None = None
    application_name: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # startup parameters from `options`
    keepalives: Keepalives | None = Keepalives()
    target_session_attrs: str = "any"
    load_balance_hosts: str = "disable"
    pooler: str | None = None  # why the URL says a transaction pooler is in front
    schema: str | None = None
    ignored: tuple[str, ...] = ()  # other clients' keys, with why they mean nothing here


def parse(raw: str) -> DatabaseUrl:
    """Parse a libpq URI: `postgresql://[user[:password]@][host[:port][,...]][/dbname][?k=v&...]`."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise _error("is not a URL of the form postgresql://user:password@host:5432/dbname")
    if scheme not in SCHEMES:
        raise _error(f"scheme '{scheme}' is not supported: use postgresql:// or postgres://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    values: dict[str, str] = {}
    if at and user:
        values["user"] = unquote(user)
    if at and ":" in userinfo:
        values["password"] = unquote(password)
    if path:
        values["dbname"] = unquote(path)
    hosts, ports = _hostspecs(hostlist)
    if any(hosts):
        values["host"] = ",".join(hosts)
    if any(ports):
        values["port"] = ",".join(ports)
    for key, value in _query(query).items():
        values[key] = value  # as libpq: the query string overrides the URI's parts
    return _validate(values)


def _hostspecs(hostlist: str) -> tuple[list[str], list[str]]:
    """`h1:5432,[::1]:5433,%2Fsocket%2Fdir` -> hosts and ports, percent-decoded."""
    hosts, ports = [], []
    for spec in hostlist.split(",") if hostlist else []:
        if spec.startswith("["):
            host, _, after = spec[1:].partition("]")
            port = after.removeprefix(":")
        else:
            host, _, port = spec.partition(":")
        hosts.append(unquote(host))
        ports.append(unquote(port))
    return hosts, ports


def _query(query: str) -> dict[str, str]:
    """`k=v&...`, percent-decoded as libpq does ('+' stays a plus sign)."""
    params: dict[str, str] = {}
    for pair in query.split("&") if query else []:
        key, eq, value = pair.partition("=")
        key = unquote(key)
        if not eq:
            raise _error(f"query parameter '{_short(key)}' has no value")
        if key in params:
            raise _error(f"query parameter '{_short(key)}' is given more than once")
        params[key] = unquote(value)
    return params


def _validate(v: dict[str, str]) -> DatabaseUrl:
    for key in v:
        if key in REFUSED:
            raise _error(f"'{key}' is not supported: {REFUSED[key]}")
        if key not in SUPPORTED and key not in IGNORED and key not in ("user", "password"):
            raise _error(
                f"unknown parameter '{_short(key)}'; supported: {', '.join(SUPPORTED)} "
                "(see README, DATABASE_URL)"
            )
    if not v.get("dbname"):
        raise _error("names no database (the /dbname part)")
    if not v.get("user"):
        raise _error("names no user (the user@ part)")
    hosts = _hosts(v)
    sslmode = _choice(v, "sslmode", (*SSLMODES, "no-verify"), "prefer")
    if sslmode == "no-verify":  # node-postgres: TLS without certificate checks
        sslmode = "require"
    channel_binding = _choice(v, "channel_binding", ("disable", "prefer", "require"), "prefer")
    if channel_binding == "require" and sslmode == "disable":
        raise _error("channel_binding=require needs TLS, but sslmode=disable")
    if _choice(v, "gssencmode", ("disable", "prefer", "require"), "prefer") == "require":
        raise _error("gssencmode=require is not supported: pg8000 has no GSSAPI encryption")
    if _choice(v, "sslnegotiation", ("postgres", "direct"), "postgres") == "direct":
        raise _error("sslnegotiation=direct is not supported: pg8000 negotiates TLS as 'postgres'")
    if _choice(v, "sslsni", ("0", "1"), "1") == "0":
        raise _error("sslsni=0 is not supported: pg8000 always sends the host name (SNI)")
    encoding = v.get("client_encoding", "UTF8")
    if encoding.upper().replace("-", "") not in ("UTF8", "UNICODE"):
        raise _error(f"client_encoding '{_short(encoding)}' is not supported: use UTF8")
    pooler = None
    if "pgbouncer" in v:
        if _choice(v, "pgbouncer", ("true", "false"), "false") == "true":
            pooler = "pgbouncer=true in DATABASE_URL"
    else:
        pooler = known_pooler(hosts)
    schema = v.get("schema")
    if schema is not None and not _IDENTIFIER.match(schema):
        raise _error(f"schema '{_short(schema)}' is not a plain lower-case identifier")
    return DatabaseUrl(
        hosts=hosts,
        user=v["user"],
        password=v.get("password") or None,
        database=v["dbname"],
        sslmode=sslmode,
        ssl_context=ssl_context(
            sslmode, v.get("sslrootcert"), v.get("sslcert"), v.get("sslkey"), v.get("sslpassword")
        ),
        channel_binding=channel_binding,
        require_auth=_require_auth(v.get("require_auth")),
        connect_timeout=_connect_timeout(v.get("connect_timeout")),
        application_name=v.get("application_name") or v.get("fallback_application_name"),
        options=parse_options(v.get("options", "")),
        keepalives=_keepalives(v),
        target_session_attrs=_choice(v, "target_session_attrs", TARGET_SESSION_ATTRS, "any"),
        load_balance_hosts=_choice(v, "load_balance_hosts", ("disable", "random"), "disable"),
        pooler=pooler,
        schema=schema,
        ignored=tuple(f"{key} ({IGNORED[key]})" for key in v if key in IGNORED),
    )


def _hosts(v: dict[str, str]) -> tuple[Host, ...]:
    if "unix_sock" in v:  # pg8000's own spelling: the socket file itself
        directory, _, name = v["unix_sock"].rpartition("/.s.PGSQL.")
        if not directory.startswith("/") or not name.isdigit() or "host" in v:
            raise _error("unix_sock must be /dir/.s.PGSQL.<port>, without a host")
        return (Host(directory, int(name)),)
    names = v.get("host", "").split(",")
    if not any(names):
        raise _error("names no host: use @host:port, or ?host=/socket/dir for a Unix socket")
    ports = v.get("port", "").split(",")
    addrs = v["hostaddr"].split(",") if "hostaddr" in v else [""] * len(names)
    if len(ports) == 1:
        ports = ports * len(names)
    if len(ports) != len(names) or len(addrs) != len(names):
        raise _error(f"names {len(names)} hosts but {len(ports)} ports or hostaddrs")
    hosts = []
    for name, port, addr in zip(names, ports, addrs, strict=True):
        if not name:
            raise _error("has an empty host in its host list")
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise _error(f"port '{_short(port)}' is not a TCP port number")
        hosts.append(Host(name, int(port or 5432), addr or None))
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


def parse_options(raw: str) -> dict[str, str]:
    """libpq's `options`: `-c name=value` and `--name=value` become startup parameters of
    their own (poolers understand those); anything else (Neon's `endpoint=...`) is passed
    on verbatim as `options`. Settings the function owns are refused, naming the variable."""
    tokens = _split_options(raw)
    params: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        if flag == "-c" and i + 1 < len(tokens):
            setting, i = tokens[i + 1], i + 2
        elif flag.startswith("-c") and len(flag) > 2:
            setting, i = flag[2:], i + 1
        elif flag.startswith("--") and "=" in flag:
            name, _, value = flag[2:].partition("=")
            setting, i = f"{name.replace('-', '_')}={value}", i + 1
        else:
            rest.append(flag)
            i += 1
            continue
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise _error(f"options: '{_short(setting)}' is not name=value")
        if name.lower() in OWN_SETTINGS:
            raise _error(
                f"options sets {name.lower()}, which the function sets itself: "
                f"use {OWN_SETTINGS[name.lower()]}"
            )
        params[name] = value
    if rest:
        params["options"] = " ".join(t.replace("\\", "\\\\").replace(" ", "\\ ") for t in rest)
    return params


def _split_options(raw: str) -> list[str]:
    """Split on unescaped whitespace; a backslash escapes the next character (as libpq)."""
    tokens, current, escaped, has = [], [], False, False
    for ch in raw:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped, has = True, True
        elif ch.isspace():
            if has:
                tokens.append("".join(current))
            current, has = [], False
        else:
            current.append(ch)
            has = True
    if has:
        tokens.append("".join(current))
    return tokens


def _choice(v: dict[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = v.get(key, default)
    if value not in allowed:
        raise _error(f"{key} '{_short(value)}' is not one of {', '.join(allowed)}")
    return value


def _whole(v: dict[str, str], key: str, default: int) -> int:
    raw = v.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise _error(f"{key} '{_short(raw)}' is not a whole number")
    return int(raw)


def _connect_timeout(raw: str | None) -> float | None:
    """Seconds; libpq treats 0 (or nothing) as its default and values below 2 as 2."""
    if raw is None:
        return None
    seconds = _whole({"connect_timeout": raw}, "connect_timeout", 0)
    return float(max(seconds, 2)) if seconds else None


def _keepalives(v: dict[str, str]) -> Keepalives | None:
    if _choice(v, "keepalives", ("0", "1"), "1") == "0":
        return None
    default = Keepalives()
    return Keepalives(
        idle=_whole(v, "keepalives_idle", default.idle),
        interval=_whole(v, "keepalives_interval", default.interval),
        count=_whole(v, "keepalives_count", default.count),
        user_timeout_ms=_whole(v, "tcp_user_timeout", default.user_timeout_ms),
    )


def _require_auth(raw: str | None) -> frozenset[str] | None:
    """libpq's require_auth: a list of methods, or of `!method`s to forbid."""
    if raw is None:
        return None
    methods = [m.strip() for m in raw.split(",")]
    negated = {m.startswith("!") for m in methods}
    names = [m.removeprefix("!") for m in methods]
    if len(negated) != 1 or not all(n in AUTH_METHODS for n in names):
        raise _error(
            f"require_auth '{_short(raw)}' must list methods of {', '.join(AUTH_METHODS)}, "
            "all with or all without '!'"
        )
    return frozenset(set(AUTH_METHODS) - set(names) if True in negated else names)


def ssl_context(
    sslmode: str, rootcert: str | None, cert: str | None, key: str | None, password: str | None
) -> ssl.SSLContext | bool | None:
    """Map libpq's sslmode to pg8000's `ssl_context` argument, with libpq's meaning.

    pg8000: False = plain, None = TLS if the server offers it (unverified) else plain,
    True = TLS required (unverified), an SSLContext = TLS with that context.
    """
    if sslmode == "disable":
        return False
    if sslmode in ("allow", "prefer"):
        return None  # libpq: use TLS when offered, no certificate check
    if sslmode == "require" and not rootcert and not cert:
        return True
    # libpq: 'require' with a root certificate given behaves as 'verify-ca'.
    verify = sslmode != "require" or bool(rootcert)
    try:
        if verify:
            system = rootcert in (None, "system")
            ctx = ssl.create_default_context(cafile=None if system else rootcert)
            ctx.check_hostname = sslmode == "verify-full"
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(cert, key, password)
    except (OSError, ssl.SSLError) as exc:
        raise _error(f"cannot load TLS files: {exc.strerror or exc}") from None
    return ctx


def _short(text: str, limit: int = 40) -> str:
    """Input echoed in a message, bounded: a URL can be pasted wrong in any length."""
    return text if len(text) <= limit else text[:limit] + "..."
