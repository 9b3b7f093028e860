"""Configuration: read the environment once, validate it without touching the network.

Everything the function needs from its environment is parsed here into one frozen
`Settings`, so a bad deployment fails at startup with one message that names the
variable, instead of failing on every request.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from lib.database_url import uri as database_url
from lib.database_url.uri import DatabaseUrl
from lib.errors import ConfigError, bounded
from lib.names import LABEL, PLAIN_IDENTIFIER
from lib.resource import Resource, columns_setting

log = logging.getLogger(__name__)

USERS = "users"  # the resource the function serves at `/`: its envelope key and its table
DEFAULT_COLUMNS = ("id", "email", "name", "created_at")  # when USERS_COLUMNS is not set
APPLICATION_NAME = "users-function"
RESPONSE_CACHE_MB = 4  # docs/cache.md: its RSS measured full; docs/sizing.md: the memory budget
# Cloud Run functions refuse a response past 32 MB, uncompressed, when it is not streamed
# (docs/http-api.md gives the source); every listing is sent whole. 32 MB whether "MB" means
# 10^6 or 2^20 bytes, less 100 kB for the status line and headers (under 2 kB here).
CLOUD_RUN_MAX_BYTES = 31_900_000
_ORIGIN = re.compile(rf"https?://(?:{LABEL}(?:\.{LABEL})*|\[[0-9a-f:.]+\])(?::[0-9]{{1,5}})?")
_IP_TYPES = {"public": "PUBLIC", "private": "PRIVATE", "psc": "PSC"}
T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class CloudSql:
    """How to reach a Cloud SQL instance through the Cloud SQL Python Connector."""

    instances: tuple[str, ...]  # the primary and its read replicas, in no particular order
    database: str
    user: str
    password: str | None = field(repr=False)
    iam_auth: bool
    ip_type: str  # a member name of google.cloud.sql.connector.IPTypes
    api_endpoint: str | None = None  # the Admin API's base URL; None = Google's public one
    # Which instance serves, as libpq's target_session_attrs: any, primary, standby,
    # prefer-standby (read-write and read-only as libpq spells primary and any).
    target_session_attrs: str = "prefer-standby"


@dataclass(frozen=True)
class AlloyDb(CloudSql):
    """How to reach AlloyDB instances through the AlloyDB Python Connector: `instances` are
    URIs (projects/P/locations/R/clusters/C/instances/I), `ip_type` a member name of
    google.cloud.alloydbconnector.IPTypes, `api_endpoint` a gRPC host[:port]."""


@dataclass(frozen=True)
class _Connector:
    """What differs between the connector paths' settings."""

    variable: str  # the setting naming the instances
    pattern: str  # what one name looks like
    example: str
    default_ip: str
    endpoint: str  # the setting naming another Admin API endpoint


CLOUD_SQL = _Connector(
    "INSTANCE_CONNECTION_NAME",
    r"[a-z0-9.:\-]+:[a-z0-9\-]+:[a-z0-9\-]+",
    "project:region:instance",
    "public",
    "CLOUD_SQL_API_ENDPOINT",
)
ALLOYDB = _Connector(
    "ALLOYDB_INSTANCE_URI",
    r"projects/[a-z0-9.:\-]+/locations/[a-z0-9\-]+/clusters/[a-z0-9\-]+/instances/[a-z0-9\-]+",
    "projects/P/locations/R/clusters/C/instances/I",
    "private",
    "ALLOYDB_API_ENDPOINT",
)


@dataclass(frozen=True)
class Settings:
    """All configuration, validated. `repr` never shows a password."""

    resource: Resource  # what `/` serves: `users`, its columns from USERS_COLUMNS
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    statement_timeout_ms: int
    connect_timeout: float
    application_name: str
    idle_timeout: float  # 0 = never close idle connections
    max_waiting: int | None  # requests allowed to wait for a connection; None = no limit
    # Behind a transaction pooler (PgBouncer & co): True, False, or None to find out.
    transaction_pooler: bool | None
    response_cache_bytes: int  # the response cache's bound; 0 = off (RESPONSE_CACHE=off)
    workers: int  # gunicorn worker processes per instance (WORKERS): each has its own pool
    fleet_max_instances: int | None  # the deploy's --max-instances, when told (cloudbuild.yaml)
    project: str | None  # the Google Cloud project, for trace links in log lines
    url: DatabaseUrl | None = None  # set when DATABASE_URL is used (password hidden by repr)
    cloud_sql: CloudSql | None = None
    alloydb: AlloyDb | None = None
    request_timeout: float = 60.0  # REQUEST_TIMEOUT: past it, a running statement is cancelled
    client_idle_timeout: float = 30.0  # CLIENT_IDLE_TIMEOUT: a client reading nothing is cut
    max_response_bytes: int | None = None  # RESPONSE_MAX_BYTES; None = no limit
    cors_origins: tuple[str, ...] = ()  # CORS_ALLOWED_ORIGINS: exact origins, ("*",), or none
    # DB_MAX_REPLICA_LAG: a standby lagging more is passed over; None = never
    max_replica_lag: float | None = 30.0

    @property
    def columns(self) -> tuple[str, ...]:
        """The served columns (USERS_COLUMNS)."""
        return self.resource.columns


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate the environment; raise ConfigError naming the first bad variable."""
    env = os.environ if environ is None else environ
    has_url = bool(env.get("DATABASE_URL", "").strip())
    has_instance = bool(env.get("INSTANCE_CONNECTION_NAME", "").strip())
    has_alloydb = bool(env.get("ALLOYDB_INSTANCE_URI", "").strip())
    if has_url + has_instance + has_alloydb > 1:
        raise ConfigError(
            "DATABASE_URL",
            "set one of DATABASE_URL, INSTANCE_CONNECTION_NAME (Cloud SQL) or "
            "ALLOYDB_INSTANCE_URI (AlloyDB), not several",
        )
    if not has_url and not has_instance and not has_alloydb:
        raise ConfigError(
            "DATABASE_URL",
            "not set: set DATABASE_URL (postgresql://user:pass@host/db) or "
            "INSTANCE_CONNECTION_NAME with DB_NAME and DB_USER for Cloud SQL",
        )
    common: dict[str, Any] = {
        "resource": _resource(USERS, env, DEFAULT_COLUMNS),
        "pool_size": _int(env, "DB_POOL_SIZE", 5, minimum=1),
        "max_overflow": _int(env, "DB_MAX_OVERFLOW", 0, minimum=0),
        "pool_timeout": _float(env, "DB_POOL_TIMEOUT", 3.0),
        "pool_recycle": _int(env, "DB_POOL_RECYCLE", 1800, minimum=1),
        "statement_timeout_ms": _int(env, "DB_STATEMENT_TIMEOUT_MS", 10_000, minimum=1),
        "connect_timeout": _float(env, "DB_CONNECT_TIMEOUT", 5.0),
        "application_name": _application_name(env.get("DB_APPLICATION_NAME", "")),
        "idle_timeout": _float(env, "DB_IDLE_TIMEOUT", 10.0, allow_zero=True),
        "max_waiting": _int(env, "DB_MAX_WAITING", None, minimum=0),
        "transaction_pooler": _pooler(env.get("DB_TRANSACTION_POOLER", "")),
        "response_cache_bytes": _response_cache(env),
        # Cloud Run functions' default --timeout: set it to the deployed one.
        "request_timeout": _float(env, "REQUEST_TIMEOUT", 60.0),
        "client_idle_timeout": _float(env, "CLIENT_IDLE_TIMEOUT", 30.0),
        "cors_origins": _origins(env.get("CORS_ALLOWED_ORIGINS", "")),
        "max_response_bytes": _max_response_bytes(env),
        "max_replica_lag": _max_replica_lag(env),
        "workers": _int(env, "WORKERS", 1, minimum=1),
        "fleet_max_instances": _int(env, "FLEET_MAX_INSTANCES", None, minimum=1),
        "project": env.get("GOOGLE_CLOUD_PROJECT", "").strip()
        or env.get("GCP_PROJECT", "").strip()
        or None,
    }
    if has_url:
        return _with_url(database_url.parse(env["DATABASE_URL"].strip()), env, common)
    if has_alloydb:
        return Settings(alloydb=AlloyDb(**_connector(env, ALLOYDB)), **common)
    return Settings(cloud_sql=CloudSql(**_connector(env, CLOUD_SQL)), **common)


def _with_url(url: DatabaseUrl, env: Mapping[str, str], common: dict[str, Any]) -> Settings:
    """Merge what the URL says with the DB_* variables; a disagreement is an error, never a
    silent override."""
    if url.connect_timeout is not None:
        if (
            env.get("DB_CONNECT_TIMEOUT", "").strip()
            and common["connect_timeout"] != url.connect_timeout
        ):
            raise ConfigError(
                "DATABASE_URL", "connect_timeout disagrees with DB_CONNECT_TIMEOUT; set one"
            )
        common["connect_timeout"] = url.connect_timeout
    if url.application_name is not None:  # any name libpq and the server take
        if env.get("DB_APPLICATION_NAME", "").strip():
            raise ConfigError(
                "DATABASE_URL", "application_name is set twice (and DB_APPLICATION_NAME); set one"
            )
        common["application_name"] = url.application_name
    elif url.fallback_application_name and not env.get("DB_APPLICATION_NAME", "").strip():
        common["application_name"] = url.fallback_application_name
    if url.pooler is not None:
        if common["transaction_pooler"] is False:
            raise ConfigError(
                "DB_TRANSACTION_POOLER", f"is false, but DATABASE_URL names {url.pooler}"
            )
        common["transaction_pooler"] = True
    common["resource"] = replace(common["resource"], schema=url.schema)
    return Settings(url=url, **common)


def _connector(env: Mapping[str, str], kind: _Connector) -> dict[str, Any]:
    """The settings of a connector path (Cloud SQL or AlloyDB), as keyword arguments."""
    instances = tuple(name.strip() for name in env[kind.variable].split(","))
    for instance in instances:
        if not re.fullmatch(kind.pattern, instance):
            raise ConfigError(
                kind.variable,
                f"'{instance}' must look like {kind.example} (several: comma-separated)",
            )
    if len(set(instances)) != len(instances):
        raise ConfigError(kind.variable, "names an instance twice")
    database = env.get("DB_NAME", "").strip()
    if not database:
        raise ConfigError("DB_NAME", f"is required with {kind.variable}")
    iam_user = env.get("DB_IAM_USER", "").strip()
    iam_auth = bool(iam_user) or _bool(env, "DB_IAM_AUTH")
    user = env.get("DB_USER", "").strip()
    password = env.get("DB_PASS", "")
    if iam_auth and (user or password):
        variable = "DB_IAM_USER" if iam_user else "DB_IAM_AUTH"
        raise ConfigError(variable, "IAM authentication takes no DB_USER or DB_PASS; keep one")
    if iam_user.endswith(".gserviceaccount.com"):
        raise ConfigError(
            "DB_IAM_USER", "drop '.gserviceaccount.com': Google names IAM users without it"
        )
    if not iam_auth:
        if not user:
            raise ConfigError("DB_USER", "is required (or DB_IAM_AUTH=true for IAM database auth)")
        if not password:
            raise ConfigError("DB_PASS", "is required with DB_USER (or use DB_IAM_AUTH=true)")
    ip_type_raw = env.get("IP_TYPE", "").strip().lower()
    if not ip_type_raw:
        ip_type_raw = "private" if _bool(env, "PRIVATE_IP") else kind.default_ip
    if ip_type_raw not in _IP_TYPES:
        raise ConfigError("IP_TYPE", f"'{ip_type_raw}' is not one of public, private, psc")
    endpoint = env.get(kind.endpoint, "")
    return {
        "instances": instances,
        "database": database,
        "user": iam_user or user,  # empty with DB_IAM_AUTH alone: the runtime service account's
        "password": None if iam_auth else password,
        "iam_auth": iam_auth,
        "ip_type": _IP_TYPES[ip_type_raw],
        "api_endpoint": _api_endpoint(endpoint) if kind is CLOUD_SQL else _grpc_endpoint(endpoint),
        "target_session_attrs": _target_session_attrs(env.get("DB_TARGET_SESSION_ATTRS", "")),
    }


def _grpc_endpoint(raw: str) -> str | None:
    """The AlloyDB Admin API's gRPC endpoint as host[:port], for private API endpoints or a
    local emulator; always over TLS (gRPC's own)."""
    raw = raw.strip()
    if not raw:
        return None
    if not re.fullmatch(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?", raw):
        raise ConfigError(
            "ALLOYDB_API_ENDPOINT", "must be host[:port], such as alloydb.googleapis.com:443"
        )
    return raw


def _target_session_attrs(raw: str) -> str:
    """DB_TARGET_SESSION_ATTRS, in the words of libpq's target_session_attrs. The function's
    sessions are read-only, so read-write means primary and read-only means any."""
    value = raw.strip().lower() or "prefer-standby"
    value = {"read-write": "primary", "read-only": "any"}.get(value, value)
    if value not in ("any", "primary", "standby", "prefer-standby"):
        raise ConfigError(
            "DB_TARGET_SESSION_ATTRS",
            f"'{raw.strip()}' is not one of any, primary, standby, prefer-standby",
        )
    return value


def _api_endpoint(raw: str) -> str | None:
    """The Cloud SQL Admin API's base URL, for private API endpoints (Private Service Connect
    for Google APIs, `https://sqladmin-myendpoint.p.googleapis.com`) or a local emulator.
    The function sends its access token there: plain http only to a loopback address."""
    raw = raw.strip().rstrip("/")
    if not raw:
        return None
    url = urlsplit(raw)
    if url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment:
        raise ConfigError(
            "CLOUD_SQL_API_ENDPOINT", "must be a base URL such as https://sqladmin.googleapis.com"
        )
    loopback = url.hostname == "localhost" or url.hostname.startswith("127.")
    if url.scheme == "http" and not loopback:
        raise ConfigError(
            "CLOUD_SQL_API_ENDPOINT", "must use https: the function sends its access token there"
        )
    return raw


def _resource(name: str, env: Mapping[str, str], default: tuple[str, ...]) -> Resource:
    """The table `name`, keyed by `id`, serving the columns its setting (USERS_COLUMNS) lists."""
    setting = columns_setting(name)
    return Resource(name, name, _columns(setting, env.get(setting, ""), default), key="id")


def _columns(setting: str, raw: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if not raw.strip():
        return default
    names = tuple(part.strip() for part in raw.split(","))
    for name in names:
        if not PLAIN_IDENTIFIER.fullmatch(name):
            raise ConfigError(setting, f"'{name}' is not a plain lower-case column name")
    if len(set(names)) != len(names):
        raise ConfigError(setting, "lists a column twice")
    return names


def _max_response_bytes(env: Mapping[str, str]) -> int | None:
    """RESPONSE_MAX_BYTES: 0 = no limit; unset = the platform's limit when running on Cloud
    Run (K_SERVICE is set there), else none."""
    default = CLOUD_RUN_MAX_BYTES if env.get("K_SERVICE", "").strip() else 0
    return _int(env, "RESPONSE_MAX_BYTES", default, minimum=0) or None


def _max_replica_lag(env: Mapping[str, str]) -> float | None:
    """DB_MAX_REPLICA_LAG: seconds (30 when unset), or off/0 to read from standbys however
    far behind they are (docs/configuration.md says why it is on)."""
    if env.get("DB_MAX_REPLICA_LAG", "").strip().lower() in ("off", "0"):
        return None
    return _float(env, "DB_MAX_REPLICA_LAG", 30.0)


def _origins(raw: str) -> tuple[str, ...]:
    """CORS_ALLOWED_ORIGINS: `*`, or exact origins (scheme://host[:port], as a browser sends
    them in Origin), comma-separated; lower-cased, as browsers serialize them."""
    if raw.strip() == "*":
        return ("*",)
    origins = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                "CORS_ALLOWED_ORIGINS",
                f"{bounded(origin)} is not an origin: give scheme://host[:port] (no path, no "
                "wildcard inside a host), a comma-separated list of them, or * alone",
            )
    return origins


def _application_name(raw: str) -> str:
    name = raw.strip() or APPLICATION_NAME
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,63}", name):
        raise ConfigError("DB_APPLICATION_NAME", "use 1-63 letters, digits, '_', '.', ':' or '-'")
    return name


def _response_cache(env: Mapping[str, str]) -> int:
    """RESPONSE_CACHE (on by default) and its bound RESPONSE_CACHE_MB, in bytes (0: off)."""
    on = _bool(env, "RESPONSE_CACHE") if env.get("RESPONSE_CACHE", "").strip() else True
    megabytes = _int(env, "RESPONSE_CACHE_MB", RESPONSE_CACHE_MB, minimum=1)
    return megabytes * 2**20 if on else 0


def _pooler(raw: str) -> bool | None:
    value = raw.strip().lower()
    if value in ("", "auto"):
        return None
    return _bool({"DB_TRANSACTION_POOLER": value}, "DB_TRANSACTION_POOLER")


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
        settings = load()
    except ConfigError as exc:
        print(f"users function: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.url is not None and settings.url.ignored:
        log.info("DATABASE_URL: ignored: %s", "; ".join(settings.url.ignored))
    return settings
