"""DATABASE_URL: a libpq connection URI, read with libpq's meaning and mapped to pg8000.

Hosted PostgreSQL hands out libpq URIs (Neon, Supabase, Heroku, RDS, Azure...) carrying
parameters pg8000 has never heard of. Each one here is honoured with libpq 18's meaning, or
refused in one line that names it and says why; none is silently dropped. The source of
truth is libpq itself: tests/test_libpq_oracle.py compares this module with libpq's own
parser on PostgreSQL's URI tests, providers' URLs and generated cases. The deviations are
listed in docs/connection-strings.md. Reference:
https://www.postgresql.org/docs/current/libpq-connect.html (32.1.1 and 32.1.2).

Values are `str`; bytes that are not UTF-8 (`caf%E9`) are kept as surrogate escapes and
go on the wire as the same bytes (see `wire`), as libpq sends them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import socket
import ssl
import warnings
from dataclasses import dataclass, field

from lib.errors import ConfigError

SCHEMES = ("postgresql", "postgres", "postgresql+pg8000")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
AUTH_METHODS = ("password", "md5", "gss", "sspi", "scram-sha-256", "oauth", "none")
TLS_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
PROTOCOL_VERSIONS = ("3.0", "3.2", "latest")
DEFAULT_SOCKET_DIR = "/var/run/postgresql"  # libpq's compiled default (Debian, psycopg's wheel)
# Session settings the function sets itself: a URL may not change them behind its back.
OWN_SETTINGS = {
    "statement_timeout": "DB_STATEMENT_TIMEOUT_MS",
    "idle_in_transaction_session_timeout": "DB_STATEMENT_TIMEOUT_MS",
    "idle_session_timeout": "DB_IDLE_TIMEOUT",
    "default_transaction_read_only": "nothing: the function only reads, by design",
    "transaction_read_only": "nothing: the function only reads, by design",
}
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
# libpq keywords that pg8000 or Python cannot honour: refused, saying why.
REFUSED = {
    "passfile": "put the password in the URL (from Secret Manager) instead",
    "service": "there is no pg_service.conf on Cloud Run; spell the parameters out",
    "servicefile": "there is no pg_service.conf on Cloud Run; spell the parameters out",
    "requirepeer": "Unix peer credentials are not checked by the function",
    "krbsrvname": "pg8000 has no GSSAPI/Kerberos",
    "gsslib": "pg8000 has no GSSAPI/Kerberos",
    "gssdelegation": "pg8000 has no GSSAPI/Kerberos",
    "sslcrl": "Python's ssl module is given no revocation lists here; use sslrootcert",
    "sslcrldir": "Python's ssl module is given no revocation lists here; use sslrootcert",
    "replication": "the function does not stream replication",
    "oauth_issuer": "pg8000 has no OAuth authentication",
    "oauth_client_id": "pg8000 has no OAuth authentication",
    "oauth_client_secret": "pg8000 has no OAuth authentication",
    "oauth_scope": "pg8000 has no OAuth authentication",
    "oauth_ca_file": "pg8000 has no OAuth authentication",
    "scram_client_key": "pg8000's SCRAM logs in with the password only",
    "scram_server_key": "pg8000's SCRAM logs in with the password only",
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
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_C_SPACE = " \t\n\v\f\r"  # C's isspace(): what strtol and the server's option splitter skip
_STRTOL = re.compile(r"[+-]?[0-9]+")


def _error(problem: str) -> ConfigError:
    return ConfigError("DATABASE_URL", problem)


def wire(text: str) -> bytes:
    """The bytes libpq would send for a value of ours (surrogate escapes back to raw bytes)."""
    return text.encode("utf-8", "surrogateescape")


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


def uri_values(raw: str) -> dict[str, str]:
    """The URI's keywords and decoded values, as libpq's conninfo_uri_parse_options reads them.

    One deviation: an unencoded '@' in the password (`app:p@ss@host`) belongs to the password
    (as node-postgres and WHATWG URL parsers read it), where libpq would end it at the first
    '@'. An '@' after a '?' stays libpq's (a query value's).
    """
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise _error("is not a URL of the form postgresql://user:password@host:5432/dbname")
    if scheme not in SCHEMES:
        raise _error(
            f"scheme '{_short(scheme)}' is not supported: use postgresql:// or postgres://"
        )
    values: dict[str, str] = {}
    at = rest.find("@", 0, _end(rest, "/"))
    if at >= 0:
        while (later := rest.find("@", at + 1, _end(rest, "/"))) >= 0 and "?" not in rest[at:later]:
            at = later
        user, colon, password = rest[:at].partition(":")
        if user := _decode(user, "user"):
            values["user"] = user
        if colon and (password := _decode(password, "password")):
            values["password"] = password
        rest = rest[at + 1 :]
    hosts, ports, rest = _hostspecs(rest)
    if host := _decode(hosts, "host"):
        values["host"] = host
    if port := _decode(ports, "port"):
        values["port"] = port
    if rest.startswith("/"):
        path, _, query = rest[1:].partition("?")
        if dbname := _decode(path, "dbname"):
            values["dbname"] = dbname
    else:
        query = rest[1:]  # "" or after "?"
    for key, value in _query(query):
        values[key] = value  # as libpq: the query string overrides the URI's parts
    return values


def _end(text: str, stops: str, start: int = 0) -> int:
    """Index of the first character of `stops` in text[start:], or len(text)."""
    return next((i for i in range(start, len(text)) if text[i] in stops), len(text))


def _hostspecs(rest: str) -> tuple[str, str, str]:
    """`h1:5432,[::1]:5433,%2Fdir` -> ("h1,::1,%2Fdir", "5432,5433,", what follows), as
    libpq scans them: still encoded, hosts and ports joined by commas."""
    hosts, ports, i = [], [], 0
    while True:
        if rest.startswith("[", i):
            close = rest.find("]", i)
            if close < 0:
                raise _error('has a "[" without its "]" in the host list')
            if close == i + 1:
                raise _error("has an empty IPv6 address [] in the host list")
            hosts.append(rest[i + 1 : close])
            i = close + 1
            if i < len(rest) and rest[i] not in ":/?,":
                raise _error(f"unexpected character {rest[i]!r} after ']' (expected ':' or '/')")
        else:
            end = _end(rest, ":/?,", i)
            hosts.append(rest[i:end])
            i = end
        port = ""
        if rest.startswith(":", i):
            end = _end(rest, "/?,", i + 1)
            port, i = rest[i + 1 : end], end
        ports.append(port)
        if not rest.startswith(",", i):
            return ",".join(hosts), ",".join(ports) if any(ports) else "", rest[i:]
        i += 1


def _query(query: str) -> list[tuple[str, str]]:
    """`k=v&...` as libpq reads it: every pair needs exactly one '=', a trailing '&' is
    fine, `ssl=true` (JDBC) means sslmode=require and requiressl is sslmode's old name."""
    pairs = []
    items = query.split("&") if query else []
    if len(items) > 1 and not items[-1]:
        items.pop()  # nothing after the last '&'
    for pair in items:
        key, eq, value = pair.partition("=")
        if not eq:
            raise _error(f"query parameter '{_short(key)}' has no value (no '=')")
        if "=" in value:
            raise _error(f"query parameter '{_short(key)}' has a second '='; encode it as %3D")
        key, value = _decode(key, "a query key"), _decode(value, key)
        if key == "ssl":
            if value != "true":
                raise _error("ssl: only ssl=true is understood (as sslmode=require): use sslmode")
            key, value = "sslmode", "require"
        elif key == "requiressl":
            key, value = "sslmode", "require" if value.startswith("1") else "prefer"
        pairs.append((key, value))
    return pairs


def _decode(text: str, what: str) -> str:
    """libpq's conninfo_uri_decode: unencoded spaces at either end are trimmed and refused
    inside; %XX must be hex and never %00; bytes that are not UTF-8 stay bytes."""
    text = text.strip(" ")
    if " " in text:
        raise _error(f"{what} has an unencoded space: write it as %20")
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] != "%":
            j = _end(text, "%", i)
            out += wire(text[i:j])
            i = j
            continue
        digits = text[i + 1 : i + 3]
        if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise _error(f"{what} has an invalid percent-encoding: {_short(text[i : i + 3])!r}")
        if digits == "00":
            raise _error(f"{what} has %00: libpq forbids a NUL byte in any value")
        out.append(int(digits, 16))
        i += 3
    return out.decode("utf-8", "surrogateescape")


def _validate(v: dict[str, str]) -> DatabaseUrl:
    for key in v:
        if key in REFUSED:
            raise _error(f"'{key}' is not supported: {REFUSED[key]}")
        if key not in SUPPORTED and key not in IGNORED and key not in ("user", "password"):
            raise _error(
                f"unknown parameter '{_short(key)}'; supported: {', '.join(SUPPORTED)} "
                "(see docs/connection-strings.md)"
            )
    user = v.get("user") or _os_user()
    hosts = _hosts(v)
    channel_binding = _choice(v, "channel_binding", ("disable", "prefer", "require"), "prefer")
    sslmode, context = tls(v)
    if channel_binding == "require" and sslmode == "disable":
        raise _error("channel_binding=require with sslmode=disable is not supported: it needs TLS")
    if _choice(v, "gssencmode", ("disable", "prefer", "require"), "prefer") == "require":
        raise _error("gssencmode=require is not supported: pg8000 has no GSSAPI encryption")
    _client_encoding(v.get("client_encoding", ""))
    _protocol_versions(v)
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
        target_session_attrs=_choice(v, "target_session_attrs", TARGET_SESSION_ATTRS, "any"),
        load_balance_hosts=_choice(v, "load_balance_hosts", ("disable", "random"), "disable"),
        pooler=pooler,
        schema=schema,
        ignored=tuple(f"{key} ({IGNORED[key]})" for key in v if key in IGNORED),
    )


def _os_user() -> str:
    """libpq's default user: the name of the operating-system user running the process."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise _error("names no user, and this process's user has no name") from None


def _hosts(v: dict[str, str]) -> tuple[Host, ...]:
    """libpq's host, hostaddr and port lists; an empty host is the default socket directory,
    hostaddr alone names the server by its address."""
    if "unix_sock" in v:  # pg8000's own spelling: the socket file itself
        directory, _, name = v["unix_sock"].rpartition("/.s.PGSQL.")
        if not directory.startswith("/") or not name.isdigit() or "host" in v:
            raise _error("unix_sock must be /dir/.s.PGSQL.<port>, without a host")
        return (Host(directory, int(name)),)
    addrs = v["hostaddr"].split(",") if v.get("hostaddr") else None
    names = v["host"].split(",") if v.get("host") else [""] * len(addrs or [""])
    if addrs is not None and len(addrs) != len(names):
        raise _error(f"could not match {len(names)} host names to {len(addrs)} hostaddr values")
    ports = v.get("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(names)
    if len(ports) != len(names):
        raise _error(f"could not match {len(ports)} port numbers to {len(names)} hosts")
    hosts = []
    for i, (name, port) in enumerate(zip(names, ports, strict=True)):
        addr = addrs[i] if addrs else ""
        if addr:
            try:  # what libpq takes: getaddrinfo with AI_NUMERICHOST, no look-up
                socket.getaddrinfo(addr, None, flags=socket.AI_NUMERICHOST)
            except (socket.gaierror, UnicodeError):
                raise _error(f"hostaddr '{_short(addr)}' is not a numeric IP address") from None
        number = _strtol(port, "port") if port else 5432
        if not 0 < number < 65536:
            raise _error(f"port '{_short(port)}' is not a TCP port number")
        host = Host(name or addr or DEFAULT_SOCKET_DIR, number, addr or None)
        if host.socket_path and len(wire(host.socket_path)) > 107:
            raise _error(f"Unix socket path of {host.name!r} is too long (maximum 107 bytes)")
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
_FLAGS_WITH_ARGUMENT = set("BCcDdfhkNprStvW-")


def parse_options(raw: str) -> dict[str, str]:
    """libpq's `options`, read as the server reads it: `-c name=value` and `--name=value`
    (also inside a cluster such as `-ec name=value`) become startup parameters of their own,
    the name's '-' folded to '_' (poolers understand those); other switches and words
    (Neon's `endpoint=...`) are passed on as `options`. Settings the function owns are
    refused, naming the variable."""
    words = _split_options(raw)
    params: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        word, i = words[i], i + 1
        if not word.startswith("-") or word == "-":
            rest.append(word)
            continue
        for j in range(1, len(word)):
            flag = word[j]
            if flag not in _FLAGS_WITH_ARGUMENT:
                rest.append("-" + flag)
                continue
            argument = word[j + 1 :]
            if not argument:
                if i == len(words):
                    raise _error(f"options: -{flag} without an argument is not supported")
                argument, i = words[i], i + 1
            if flag in "c-":
                name, value = _setting(argument)
                params[name] = value
            else:
                rest.append(f"-{flag}{argument}")
            break
    if rest:
        params["options"] = " ".join(_escape_word(word) for word in rest)
    return params


def _setting(argument: str) -> tuple[str, str]:
    """The server's ParseLongOption: `name=value`, '-' in the name read as '_'."""
    name, eq, value = argument.partition("=")
    if not eq or not name:
        raise _error(f"options: '{_short(argument)}' is not supported: the server needs name=value")
    name = name.replace("-", "_")
    if name.lower() in OWN_SETTINGS:
        raise _error(
            f"options setting {name.lower()} is not supported: the function sets it itself: "
            f"use {OWN_SETTINGS[name.lower()]}"
        )
    return name, value


def _escape_word(word: str) -> str:
    """One word for the server's splitter: its spaces and backslashes escaped; an empty word
    is a lone backslash, which the server reads as an empty word again."""
    return re.sub(r"([\\ \t\n\v\f\r])", r"\\\1", word) or "\\"


def _split_options(raw: str) -> list[str]:
    """The server's pg_split_opts: words separated by unescaped ASCII whitespace (C's
    isspace, never NBSP); a backslash keeps the next character, space and tab included."""
    words, current, escaped, started = [], [], False, False
    for ch in raw:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = started = True
        elif ch in _C_SPACE:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    return words


def _choice(v: dict[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = v.get(key, default)
    if value not in allowed:
        raise _error(f"{key} '{_short(value)}' is not one of {', '.join(allowed)}")
    return value


def _strtol(raw: str, key: str) -> int:
    """An integer as libpq's pqParseIntParam reads it (strtol: C spaces around, a sign,
    leading zeros; no more than fits an int)."""
    digits = raw.strip(_C_SPACE)
    if not _STRTOL.fullmatch(digits) or not -(2**31) <= int(digits) < 2**31:
        raise _error(f"{key} '{_short(raw)}' is not a whole number")
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
            raise _error(f"{key} {v[key]!r}: Linux refuses a value below 1 (libpq too)")
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
        raise _error(
            f"require_auth '{_short(raw)}' must list methods of {', '.join(AUTH_METHODS)}, "
            "all with or all without '!'"
        )
    if len(set(names)) != len(names):
        raise _error(f"require_auth '{_short(raw)}' names a method twice")
    return frozenset(set(AUTH_METHODS) - set(names) if True in negated else names)


def _client_encoding(raw: str) -> None:
    """pg8000 speaks UTF-8; the server's spellings of it (case and punctuation ignored)."""
    name = "".join(c for c in raw if c.isalnum()).lower()
    if name not in ("", "utf8", "unicode", "auto"):
        raise _error(f"client_encoding '{_short(raw)}' is not supported: pg8000 speaks UTF8")


def _protocol_versions(v: dict[str, str]) -> None:
    for key in ("min_protocol_version", "max_protocol_version"):
        _choice(v, key, PROTOCOL_VERSIONS, "3.0")
    if v.get("min_protocol_version", "3.0") != "3.0":
        raise _error("min_protocol_version above 3.0 is not supported: pg8000 speaks protocol 3.0")


def _home_file(name: str) -> str:
    """libpq's default for a TLS file: ~/.postgresql/<name>."""
    return os.path.join(os.path.expanduser("~"), ".postgresql", name)


def tls(v: dict[str, str]) -> tuple[str, ssl.SSLContext | None]:
    """sslmode (libpq's default included) and the TLS context every mode but disable uses.

    As libpq: sslrootcert=system means verify-full against the system's roots and refuses a
    weaker mode; verify-ca/verify-full need a root certificate (sslrootcert, else
    ~/.postgresql/root.crt); `require` with a root certificate that exists is verify-ca; a
    client certificate (sslcert, else ~/.postgresql/postgresql.crt) is presented whenever
    TLS is used, and ignored when its file does not exist.
    """
    rootcert = v.get("sslrootcert") or None
    default_mode = "verify-full" if rootcert == "system" else "prefer"
    sslmode = _choice(v, "sslmode", (*SSLMODES, "no-verify"), default_mode)
    if sslmode == "no-verify":  # node-postgres: TLS without certificate checks
        sslmode = "require"
    if rootcert == "system" and sslmode != "verify-full":
        raise _error(f'sslmode "{sslmode}" is too weak for sslrootcert=system (use "verify-full")')
    negotiation = _choice(v, "sslnegotiation", ("postgres", "direct"), "postgres")
    if negotiation == "direct" and sslmode not in ("require", "verify-ca", "verify-full"):
        raise _error(
            f'sslmode "{sslmode}" is too weak for sslnegotiation=direct '
            '(use "require", "verify-ca", or "verify-full")'
        )
    certmode = _choice(v, "sslcertmode", ("disable", "allow", "require"), "allow")
    if certmode == "require":
        raise _error(
            "sslcertmode=require is not supported: Python's ssl module cannot tell whether "
            "the server asked for a client certificate"
        )
    verify_full = sslmode == "verify-full"
    if not v.get("sslsni", "1").startswith("1") and verify_full:
        raise _error(
            "sslsni=0 with verify-full is not supported: Python's ssl module checks the "
            "host name only together with sending it (SNI)"
        )
    if sslmode == "disable":
        return sslmode, None
    root = rootcert or _home_file("root.crt")
    has_root = root == "system" or os.path.exists(root)
    if sslmode in ("verify-ca", "verify-full") and not has_root:
        raise _error(
            f'sslmode={sslmode} needs the root certificate "{root}", which does not exist: '
            "give sslrootcert, use sslrootcert=system for the system's trusted roots, or "
            "choose a mode that checks no certificate"
        )
    try:
        if has_root:  # libpq checks the chain whenever a root file exists, in every mode
            ctx = ssl.create_default_context(cafile=None if root == "system" else root)
            ctx.check_hostname = verify_full
            if sslmode == "require":
                sslmode = "verify-ca"
        else:  # no certificate check: the system's trust store is not even loaded
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert = v.get("sslcert") or _home_file("postgresql.crt")
        if certmode != "disable" and os.path.exists(cert):
            key = v.get("sslkey") or _home_file("postgresql.key")
            ctx.load_cert_chain(cert, key, v.get("sslpassword") or None)
    except (OSError, ssl.SSLError) as exc:
        raise _error(f"cannot load TLS files: {exc.strerror or exc}") from None
    ctx.set_alpn_protocols(["postgresql"])  # PostgreSQL 17+ requires it for direct TLS
    lowest, highest = (
        _tls_version(v, "ssl_min_protocol_version", "TLSv1.2"),  # libpq's default minimum
        _tls_version(v, "ssl_max_protocol_version", "TLSv1.3"),
    )
    if lowest > highest:
        raise _error("ssl_min_protocol_version is above ssl_max_protocol_version")
    with warnings.catch_warnings():  # Python deprecates TLS 1.0/1.1; libpq still takes them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = lowest, highest
    if v.get("sslkeylogfile"):
        with contextlib.suppress(OSError):  # as libpq: a log it cannot open is skipped
            ctx.keylog_filename = v["sslkeylogfile"]
    return sslmode, ctx


def _tls_version(v: dict[str, str], key: str, default: str) -> ssl.TLSVersion:
    version = TLS_VERSIONS.get((v.get(key) or default).lower())
    if version is None:
        raise _error(f"{key} '{_short(v[key])}' is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3")
    return version


def _short(text: str, limit: int = 40) -> str:
    """Input echoed in a message, bounded: a URL can be pasted wrong in any length."""
    return text if len(text) <= limit else text[:limit] + "..."
