"""Configuration: read the environment once, validate it without touching the network.

Everything the function needs from its environment is parsed here into one frozen
`Settings`, so a bad deployment fails at startup with one message that names the
variable, instead of failing on every request.
"""

from __future__ import annotations

import os
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_COLUMNS = ("id", "email", "name", "created_at")
APPLICATION_NAME = "users-function"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_URL_SCHEMES = {"postgres", "postgresql", "postgresql+pg8000"}
_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
_URL_PARAMS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "host", "unix_sock"}
_IP_TYPES = {"public": "PUBLIC", "private": "PRIVATE", "psc": "PSC"}
T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class CloudSql:
    """How to reach a Cloud SQL instance through the Cloud SQL Python Connector."""

    instance: str
    database: str
    user: str
    password: str | None = field(repr=False)
    iam_auth: bool
    ip_type: str  # a member name of google.cloud.sql.connector.IPTypes


@dataclass(frozen=True)
class Settings:
    """All configuration, validated. `repr` never shows a password."""

    columns: tuple[str, ...]
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    statement_timeout_ms: int
    connect_timeout: float
    application_name: str
    idle_timeout: float  # 0 = never close idle connections
    max_waiting: int | None  # requests allowed to wait for a connection; None = no limit
    transaction_pooler: bool  # behind PgBouncer & co: no session settings of our own
    url: URL | None = None  # set when DATABASE_URL is used (password hidden by repr)
    connect_args: Mapping[str, Any] = field(default_factory=dict, repr=False)
    cloud_sql: CloudSql | None = None

    def startup_params(self) -> dict[str, str]:
        """Session settings sent in the startup packet: set once per connection, no round trip.

        A transaction pooler (PgBouncer) rejects most startup parameters and would not keep
        them on the server connection anyway: there, set them on the role (see
        sql/readonly_role.sql) and send only what poolers track.
        """
        if self.transaction_pooler:
            return {"TimeZone": "UTC"}
        return {
            "TimeZone": "UTC",
            "statement_timeout": str(self.statement_timeout_ms),
            # A connection must never sit in an open transaction holding locks or the xmin horizon.
            "idle_in_transaction_session_timeout": str(max(self.statement_timeout_ms, 1000)),
            "default_transaction_read_only": "on",
        }


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate the environment; raise ConfigError naming the first bad variable."""
    env = os.environ if environ is None else environ
    has_url = bool(env.get("DATABASE_URL", "").strip())
    has_instance = bool(env.get("INSTANCE_CONNECTION_NAME", "").strip())
    if has_url and has_instance:
        raise ConfigError(
            "DATABASE_URL",
            "set either DATABASE_URL or INSTANCE_CONNECTION_NAME (Cloud SQL), not both",
        )
    if not has_url and not has_instance:
        raise ConfigError(
            "DATABASE_URL",
            "not set: set DATABASE_URL (postgresql://user:pass@host/db) or "
            "INSTANCE_CONNECTION_NAME with DB_NAME and DB_USER for Cloud SQL",
        )
    common: dict[str, Any] = {
        "columns": _columns(env.get("USERS_COLUMNS", "")),
        "pool_size": _int(env, "DB_POOL_SIZE", 5, minimum=1),
        "max_overflow": _int(env, "DB_MAX_OVERFLOW", 0, minimum=0),
        "pool_timeout": _float(env, "DB_POOL_TIMEOUT", 3.0),
        "pool_recycle": _int(env, "DB_POOL_RECYCLE", 1800, minimum=1),
        "statement_timeout_ms": _int(env, "DB_STATEMENT_TIMEOUT_MS", 10_000, minimum=1),
        "connect_timeout": _float(env, "DB_CONNECT_TIMEOUT", 5.0),
        "application_name": _application_name(env.get("DB_APPLICATION_NAME", "")),
        "idle_timeout": _float(env, "DB_IDLE_TIMEOUT", 10.0, allow_zero=True),
        "max_waiting": _int(env, "DB_MAX_WAITING", None, minimum=0),
        "transaction_pooler": _bool(env, "DB_TRANSACTION_POOLER"),
    }
    if has_url:
        url, connect_args = parse_database_url(env["DATABASE_URL"].strip())
        return Settings(url=url, connect_args=connect_args, **common)
    return Settings(cloud_sql=_cloud_sql(env), **common)


def parse_database_url(raw: str) -> tuple[URL, dict[str, Any]]:
    """Turn a libpq-style URL into a pg8000 URL plus pg8000 connect() arguments.

    pg8000 does not understand libpq's query parameters (`sslmode`, `host=/socket/dir`),
    so they are translated here rather than passed through and rejected at connect time.
    """
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL", "is not a URL of the form postgresql://user:password@host:5432/dbname"
        ) from None
    if url.drivername not in _URL_SCHEMES:
        raise ConfigError(
            "DATABASE_URL",
            f"scheme '{url.drivername}' is not supported: use postgresql://, postgres:// "
            "or postgresql+pg8000://",
        )
    params = {key: _single(key, value) for key, value in url.query.items()}
    unknown = sorted(set(params) - _URL_PARAMS)
    if unknown:
        raise ConfigError(
            "DATABASE_URL",
            f"unsupported query parameter(s) {', '.join(unknown)}; "
            f"supported: {', '.join(sorted(_URL_PARAMS))}",
        )
    if not url.database:
        raise ConfigError("DATABASE_URL", "names no database (the /dbname part)")
    if not url.username:
        raise ConfigError("DATABASE_URL", "names no user (the user@ part)")

    connect_args: dict[str, Any] = {}
    socket_path = _socket_path(params, url.port)
    if socket_path:
        connect_args["unix_sock"] = socket_path
        if url.host:
            raise ConfigError("DATABASE_URL", "names both a host and a Unix socket; keep one")
    elif not url.host:
        raise ConfigError(
            "DATABASE_URL", "names no host: use @host:port, or ?host=/socket/dir for a Unix socket"
        )
    sslmode = params.get("sslmode", "prefer")
    if sslmode not in _SSLMODES:
        raise ConfigError(
            "DATABASE_URL", f"sslmode '{sslmode}' is not one of {', '.join(sorted(_SSLMODES))}"
        )
    if socket_path:
        sslmode = "disable"  # libpq never uses TLS over a Unix socket
    connect_args["ssl_context"] = ssl_context(
        sslmode, params.get("sslrootcert"), params.get("sslcert"), params.get("sslkey")
    )
    return url.set(drivername="postgresql+pg8000", query={}), connect_args


def ssl_context(
    sslmode: str, rootcert: str | None, cert: str | None, key: str | None
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
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("DATABASE_URL", f"cannot load TLS files: {exc.strerror or exc}") from None
    return ctx


def _socket_path(params: Mapping[str, str], port: int | None) -> str | None:
    """libpq's `host=/dir` (socket directory) or pg8000's `unix_sock=/dir/.s.PGSQL.5432`."""
    if "unix_sock" in params:
        return params["unix_sock"]
    host = params.get("host")
    if host is None:
        return None
    if not host.startswith("/"):
        raise ConfigError(
            "DATABASE_URL", "?host= must be a Unix socket directory (an absolute path)"
        )
    return f"{host.rstrip('/')}/.s.PGSQL.{port or 5432}"


def _cloud_sql(env: Mapping[str, str]) -> CloudSql:
    instance = env["INSTANCE_CONNECTION_NAME"].strip()
    if not re.fullmatch(r"[a-z0-9.:\-]+:[a-z0-9\-]+:[a-z0-9\-]+", instance):
        raise ConfigError("INSTANCE_CONNECTION_NAME", "must look like project:region:instance")
    database = env.get("DB_NAME", "").strip()
    if not database:
        raise ConfigError("DB_NAME", "is required with INSTANCE_CONNECTION_NAME")
    iam_user = env.get("DB_IAM_USER", "").strip()
    user = env.get("DB_USER", "").strip()
    password = env.get("DB_PASS", "")
    if iam_user and (user or password):
        raise ConfigError("DB_IAM_USER", "IAM authentication takes no DB_USER or DB_PASS; keep one")
    if iam_user.endswith(".gserviceaccount.com"):
        raise ConfigError(
            "DB_IAM_USER", "drop '.gserviceaccount.com': Cloud SQL names IAM users without it"
        )
    if not iam_user:
        if not user:
            raise ConfigError("DB_USER", "is required (or DB_IAM_USER for IAM database auth)")
        if not password:
            raise ConfigError("DB_PASS", "is required with DB_USER (or use DB_IAM_USER)")
    ip_type_raw = env.get("IP_TYPE", "").strip().lower()
    if not ip_type_raw:
        ip_type_raw = "private" if _bool(env, "PRIVATE_IP") else "public"
    if ip_type_raw not in _IP_TYPES:
        raise ConfigError("IP_TYPE", f"'{ip_type_raw}' is not one of public, private, psc")
    return CloudSql(
        instance=instance,
        database=database,
        user=iam_user or user,
        password=None if iam_user else password,
        iam_auth=bool(iam_user),
        ip_type=_IP_TYPES[ip_type_raw],
    )


def _columns(raw: str) -> tuple[str, ...]:
    if not raw.strip():
        return DEFAULT_COLUMNS
    names = tuple(part.strip() for part in raw.split(","))
    for name in names:
        if not _IDENTIFIER.match(name):
            raise ConfigError("USERS_COLUMNS", f"'{name}' is not a plain lower-case column name")
    if len(set(names)) != len(names):
        raise ConfigError("USERS_COLUMNS", "lists a column twice")
    return names


def _application_name(raw: str) -> str:
    name = raw.strip() or APPLICATION_NAME
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,63}", name):
        raise ConfigError("DB_APPLICATION_NAME", "use 1-63 letters, digits, '_', '.', ':' or '-'")
    return name


def _single(key: str, value: str | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        raise ConfigError("DATABASE_URL", f"query parameter '{key}' is given more than once")
    return value


def _int(env: Mapping[str, str], name: str, default: T, minimum: int) -> int | T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"'{raw}' is not a whole number") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"'{raw}' is not a number of seconds") from None
    if not (0 < value <= 3600 or (allow_zero and value == 0)):
        raise ConfigError(name, f"must be between 0 and 3600 seconds, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(name, f"'{raw}' is not true or false")


def load_or_exit() -> Settings:
    """`load()`, but a bad setting stops the process with one line instead of a traceback."""
    try:
        return load()
    except ConfigError as exc:
        print(f"users function: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
