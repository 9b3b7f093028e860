"""Every failure, from either connection path, classified once: what status it gets and why.

Clients of a serverless function retry a 503 and give up on a 500, so the class decides who
acts: what may pass by itself (the server restarting, a network cut, the pool full) is a 503
with Retry-After; what retrying cannot fix (a wrong password, a missing database, table or
grant, TLS or channel binding the server cannot meet, a host name that never resolved) is a
500 `configuration_error` that says what to fix, so nobody retries a deployment mistake
forever. A pooler or proxy in front (PgBouncer, Supavisor, Neon, RDS Proxy) answers with
SQLSTATEs of its own choosing (08P01, XX000) for both kinds, so its errors are classified by
what their message says (`POOLER_RULES`). The rules live only here; `responses` renders what
`classify` returns, and `connect_url.connect` retries what `may_pass`.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass

import pg8000.dbapi
from sqlalchemy import exc as sa_exc

RETRY_AFTER_S = 1


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class ConnectError(Exception):
    """Opening a connection failed; the driver's exception is the __cause__. `misconfigured`:
    True when retrying cannot help until someone fixes the configuration (the message says
    what), False when it may pass (then the cause's SQLSTATE is not consulted: one of several
    hosts refusing a login does not make the others' outage a misconfiguration), None to let
    the cause decide."""

    def __init__(self, message: str, misconfigured: bool | None = None) -> None:
        super().__init__(message)
        self.misconfigured = misconfigured


class ConnectionLost(Exception):
    """A pooled connection died under a statement; it has been discarded."""


class PoolBusy(Exception):
    """Every connection is in use and DB_MAX_WAITING requests already wait for one."""


class Cancelled(Exception):
    """The request stopped its own work: `reason` is "client_left", "deadline" (past
    REQUEST_TIMEOUT) or "client_idle" (lib/watch.py)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Failure:
    status: int
    code: str
    message: str  # for the client: what happened and, for a 500, what to fix; no secrets
    retryable: bool  # a 503: the client may retry after RETRY_AFTER_S
    log_level: int = logging.WARNING
    traceback: bool = False  # only for a bug of ours


# SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html) that retrying
# cannot fix, with what to do about them.
_MISCONFIGURED = {
    "28": "the database refused the login: check the user and password",
    "3D000": "the database does not exist: check the database name",
    "42501": "permission denied: grant the function's role SELECT on the served columns "
    "(sql/readonly_role.sql)",
    "42P01": "a table does not exist: create it or check the schema",
    "42703": "a column does not exist: check USERS_COLUMNS",
    "08P01": "the server refused a connection parameter: check the options of DATABASE_URL",
    "42704": "the server does not know a setting sent at connect: check the options of "
    "DATABASE_URL (PostgreSQL older than 14 has no idle_session_timeout: set DB_IDLE_TIMEOUT=0)",
    "0A000": "the server does not support a requested feature: check DATABASE_URL",
}
_UNAVAILABLE = ("08", "53", "57P", "58", "40001", "40P01", "55P03")
_QUERY_CANCELED = "57014"  # statement_timeout
_STARTING = "57P03"  # cannot_connect_now: the server is starting up, or in recovery
# A statement's own errors quote identifiers and data: their messages are never read as a
# pooler's (a column named query_wait_timeout is still a missing column).
_STATEMENT_CLASSES = ("22", "23", "42", "P0")

_SSLMODE = "the {} requires TLS: set sslmode=require (or stronger) in DATABASE_URL"
_LOGIN_REFUSED = (
    "a password was refused: check the user and password in DATABASE_URL (behind a pooler, "
    "also the password the pooler uses for its own server login)"
)
_UNAVAILABLE_MESSAGE = "The database is unavailable; retry shortly."
_POOLER_BUSY_MESSAGE = (
    "The database's pooler or proxy is full, or waiting for its database to start or come "
    "back; this may pass: retry shortly."
)


@dataclass(frozen=True)
class PoolerRule:
    """A pooler's or proxy's error message, by what it means: `fix` for a misconfiguration (a
    500 naming what to fix), None for what may pass by itself (full, slow, cut off from or
    waking its database: a 503 with Retry-After, and a connect tried again within
    DB_CONNECT_TIMEOUT). Poolers choose their SQLSTATEs freely, so the message decides.
    Sources of POOLER_RULES, one a line:
    - PgBouncer 1.x, src/client.c, objects.c, janitor.c: its own errors are all 08P01.
    - PgBouncer server_login_retry: "try again later" (1.17-1.23), the cached error (1.24+).
    - PgBouncer before 1.17: "pgbouncer cannot connect to server" (earlier "no working ...").
    - Supavisor lib/supavisor/client_handler/error.ex (to 2025): XX000, plain messages.
    - Supavisor lib/supavisor/errors/*.ex (2026): XX000, "(ECODE) message".
    - Neon proxy/src (auth/mod.rs, compute/mod.rs, control_plane/): XX000 for everything.
    - Neon control plane while a compute wakes: neondatabase/neon#5838, docs "Connection errors".
    - RDS Proxy for PostgreSQL: RDS user guide "Troubleshooting for RDS Proxy" (no SQLSTATEs).
    """

    pattern: str  # a regular expression, searched case-insensitively in the message
    fix: str | None = None


def _rules(*rules: tuple[str, str | None]) -> tuple[PoolerRule, ...]:
    return tuple(PoolerRule(pattern, fix) for pattern, fix in rules)


# What poolers and proxies say, pattern -> class (sources: PoolerRule). The first match wins:
# every misconfiguration comes before the outages, since PgBouncer's server_login_retry error
# may quote a refused password. Only what a pooler itself says is read (pooler_rule).
POOLER_RULES = _rules(
    # --- misconfigurations: a 500 that names the fix ------------------------------------------
    # PgBouncer
    (
        r"no such database",
        "the pooler has no such database: add it to the pooler's [databases] section, or "
        "fix the database name in DATABASE_URL",
    ),
    (
        r"no such user",
        "the pooler does not know the user: add it to the pooler's auth_file (or "
        "auth_query), or fix the user in DATABASE_URL",
    ),
    (r"password authentication failed|wrong password type|server signature", _LOGIN_REFUSED),
    (
        r"SASL authentication failed|invalid SASL authentication mechanism|SASL authentication "
        r"mechanisms are supported",
        "SCRAM authentication with the pooler failed: check the password in DATABASE_URL "
        "and the pooler's auth_type/auth_file",
    ),
    (
        r"login rejected",
        "the pooler's auth_hba_file rejects this login: allow the function's user and address",
    ),
    (r"^SSL required$", _SSLMODE.format("pooler")),
    # Supavisor
    (
        r"tenant or user not found|tenant/user \S+ not found|no tenant identifier",
        "the pooler (Supavisor) does not know this user or tenant: use the user name of "
        "the provider's pooled connection string (user.project-ref)",
    ),
    (r"too many authentication failures", _LOGIN_REFUSED),
    (r"SSL connection is required", _SSLMODE.format("pooler")),
    (
        r"address not in tenant allow_list",
        "the pooler refuses the function's address: add its egress IP to the allow list",
    ),
    # Neon
    (
        r"endpoint ID is not specified",
        "the Neon proxy cannot tell which endpoint: connect with TLS (sslmode=require, "
        "which sends the host name as SNI) or add options=endpoint%3D<endpoint-id> to "
        "DATABASE_URL",
    ),
    (
        r"endpoint cannot be found|endpoint \S+ not found|endpoint not found|endpoint is "
        r"disabled",
        "the Neon endpoint does not exist or is disabled: check the host name of "
        "DATABASE_URL and the endpoint in the Neon console",
    ),
    (
        r"not allowed to connect to this endpoint|from a blocked network",
        "the Neon endpoint refuses the function's address: add its egress IP to the allowed IPs",
    ),
    # RDS Proxy
    (
        r"requires TLS connections|IAM (authentication )?is allowed only with SSL",
        _SSLMODE.format("proxy"),
    ),
    (
        r"IAM authentication failed for (user|the role)|has no credentials for the role|"
        r"password that was provided for the role|supports only IAM or MD5",
        "RDS Proxy refused the login: check the user and password in DATABASE_URL against "
        "the proxy's Secrets Manager secret (the proxy accepts MD5 or IAM authentication)",
    ),
    (
        r"request returned an error: database .* does not exist",
        "the database does not exist: check the database name",
    ),
    # --- may pass: 503 with Retry-After, and a connect tried again ----------------------------
    # PgBouncer: full, slow, cannot reach its server, restarting
    (r"no more connections allowed \(max_client_conn\)", None),
    (r"client connections exceeded \(max_(db|user)_client_connections\)", None),
    (r"query_wait_timeout", None),
    (r"server login has been failing|server_login_retry", None),
    (r"pgbouncer cannot connect to server|no working server connection", None),
    (r"client_login_timeout", None),
    (r"server conn crashed\?|server closed the connection unexpectedly", None),
    (r"server shutting down|pooler is shutting down|database \S+ is disabled", None),
    (r"bouncer resources exhaustion", None),
    # Supavisor: client limits, pool checkout timeouts, its database connection failing
    (r"max client connections reached|maxclientsinsessionmode|max clients reached", None),
    (r"unable to check out (process|connection) from the pool", None),
    (r"failed to check out a connection|max pools count reached", None),
    (r"circuit breaker open|too many failed attempts to connect to the database", None),
    (r"DbHandler exited|connection to database closed", None),
    (r"failed to subscribe to tenant|proxy supervisor unavailable|failed to start proxy", None),
    # Neon: a compute waking from scale-to-zero, or its control plane busy
    (r"couldn't connect to compute node|(could not|couldn't|failed to) wake", None),
    (r"compute (node )?is starting|endpoint is idle|waiting for endpoint to become active", None),
    (r"(console|control plane) request failed", None),
    (r"too many connections (attempts|to this endpoint)|failed to acquire permit", None),
    # RDS Proxy: its pool, client and rate limits
    (r"timed-out waiting to acquire database connection", None),
    (r"maximum number of client connections to the proxy exceeded", None),
    (r"rate of connection to proxy exceeded|too many competing requests", None),
)
_COMPILED = tuple((re.compile(rule.pattern, re.IGNORECASE), rule) for rule in POOLER_RULES)


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception, when SQLAlchemy wrapped it."""
    return getattr(exc, "orig", None) or exc


def server_fields(exc: BaseException) -> dict[str, str] | None:
    """The server's error fields (C: SQLSTATE, M: message) of a pg8000 error, else None."""
    args = driver_error(exc).args
    return args[0] if args and isinstance(args[0], dict) else None


def sqlstate(exc: BaseException) -> str | None:
    fields = server_fields(exc)
    return fields.get("C") if fields else None


def is_disconnect(exc: BaseException) -> bool:
    """Does this error mean the connection is unusable? pg8000 raises InterfaceError for
    most socket failures but lets some (reset, timeout) escape as OSError, and the server
    says goodbye with SQLSTATE 57P01-57P03 (shutdown) or class 08 before closing."""
    if isinstance(driver_error(exc), pg8000.dbapi.InterfaceError | OSError):
        return True
    code = sqlstate(exc) or ""
    return code.startswith("08") or code in ("57P01", "57P02", "57P03")


def causes(exc: BaseException) -> list[BaseException]:
    """`exc`, then what it wraps (SQLAlchemy's .orig, explicit __cause__), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def misconfiguration(exc: BaseException) -> str | None:
    """What to fix, when retrying cannot help; None when the failure may pass by itself."""
    for cause in causes(exc):
        if isinstance(cause, ConfigError):
            return str(cause)
        if isinstance(cause, ConnectError) and cause.misconfigured is not None:
            return str(cause) if cause.misconfigured else None
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the server's TLS certificate was not accepted ({cause.verify_message}): "
                "check sslmode and sslrootcert"
            )
        if isinstance(cause, pg8000.dbapi.InterfaceError) and "refuses SSL" in str(cause):
            return "TLS is required (sslmode) but the server does not offer it"
        code = sqlstate(cause)
        if code:
            fields = server_fields(cause) or {}
            rule = pooler_rule(fields)
            if rule is not None and rule.fix is None:
                return None  # a pooler full or waking: it may pass, whatever its SQLSTATE
            advice = rule.fix if rule else _MISCONFIGURED.get(code) or _MISCONFIGURED.get(code[:2])
            if advice:
                return f"{advice} (SQLSTATE {code}: {fields.get('M', '')})"
    return None


def pooler_rule(fields: dict[str, str]) -> PoolerRule | None:
    """The first POOLER_RULES entry matching this server error's message, if any (never for
    a statement's error, whose message quotes names and data)."""
    if fields.get("C", "").startswith(_STATEMENT_CLASSES):
        return None
    message = fields.get("M", "")
    return next((rule for pattern, rule in _COMPILED if pattern.search(message)), None)


def _pooler_busy(exc: BaseException) -> bool:
    """A pooler or proxy said it is full, slow, cut off from its database or waking it."""
    for cause in causes(exc):
        fields = server_fields(cause)
        if fields:
            rule = pooler_rule(fields)
            return rule is not None and rule.fix is None
    return False


def may_pass(exc: BaseException) -> bool:
    """Is a failed connect worth trying again at once (within the connect budget)? Yes for a
    server starting up (57P03), nothing listening yet (refused; no Unix socket yet), a pooler
    full or waking its database; never for a misconfiguration. Other outages (timeouts,
    resets) already spent their time or are not known to pass soon: they are answered."""
    if misconfiguration(exc) is not None:
        return False
    if _pooler_busy(exc):
        return True
    for cause in causes(exc):
        if isinstance(cause, ConnectionRefusedError | FileNotFoundError):
            return True
        if sqlstate(cause) == _STARTING:
            return True
    return False


def classify(exc: BaseException) -> Failure:
    """The one table: exception -> status, code, message, retryable."""
    if isinstance(exc, Cancelled):
        if exc.reason == "deadline":
            return Failure(504, "deadline_exceeded", "The request ran past its deadline.", False)
        # 499 (nginx's "client closed request"): only the log ever sees it.
        return Failure(499, "client_closed_request", "The client went away.", False, logging.INFO)
    if isinstance(exc, sa_exc.TimeoutError | PoolBusy):
        return Failure(
            503, "pool_exhausted", "All database connections are busy; retry shortly.", True
        )
    if (advice := misconfiguration(exc)) is not None:
        return Failure(500, "configuration_error", advice, False, logging.ERROR)
    code = next((c for c in map(sqlstate, causes(exc)) if c), None)
    if code == _QUERY_CANCELED:
        return Failure(504, "statement_timeout", "The database query took too long.", False)
    if _pooler_busy(exc):
        return Failure(503, "database_unavailable", _POOLER_BUSY_MESSAGE, True)
    unavailable = Failure(503, "database_unavailable", _UNAVAILABLE_MESSAGE, True)
    if code is not None and code.startswith(_UNAVAILABLE):
        return unavailable
    if any(isinstance(c, ConnectError | ConnectionLost | OSError) for c in causes(exc)):
        return unavailable
    if is_disconnect(exc):
        return unavailable
    # A database error we have no rule for is the database's; anything else is a bug of ours.
    is_db_error = any(isinstance(c, sa_exc.DBAPIError | pg8000.dbapi.Error) for c in causes(exc))
    return Failure(500, "internal", "Internal error.", False, logging.ERROR, not is_db_error)


def describe(exc: BaseException) -> str:
    """Exception type, SQLSTATE and server message: never a DSN, a password or parameters."""
    parts = []
    for cause in causes(exc):
        fields = server_fields(cause)
        if fields:
            parts.append(f"{type(cause).__name__} {fields.get('C')}: {fields.get('M')}")
        elif not isinstance(cause, sa_exc.StatementError):  # its text holds the statement
            parts.append(f"{type(cause).__name__}: {cause}")
    return " <- ".join(dict.fromkeys(parts)) or type(exc).__name__
