"""Every failure, from either connection path, classified once: what status it gets and why.

Clients of a serverless function retry a 503 and give up on a 500, so the class decides who
acts: what may pass by itself (the server restarting, a network cut, the pool full) is a 503
with Retry-After; what retrying cannot fix (a wrong password, a missing database, table or
grant, TLS or channel binding the server cannot meet, a host name that never resolved) is a
500 `configuration_error` that says what to fix, so nobody retries a deployment mistake
forever. The rules live only here; `responses` renders what `classify` returns.
"""

from __future__ import annotations

import logging
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
            advice = _MISCONFIGURED.get(code) or _MISCONFIGURED.get(code[:2])
            if advice:
                return f"{advice} (SQLSTATE {code}: {server_fields(cause).get('M', '')})"
    return None


def classify(exc: BaseException) -> Failure:
    """The one table: exception -> status, code, message, retryable."""
    if isinstance(exc, sa_exc.TimeoutError | PoolBusy):
        return Failure(
            503, "pool_exhausted", "All database connections are busy; retry shortly.", True
        )
    if (advice := misconfiguration(exc)) is not None:
        return Failure(500, "configuration_error", advice, False, logging.ERROR)
    code = next((c for c in map(sqlstate, causes(exc)) if c), None)
    if code == _QUERY_CANCELED:
        return Failure(504, "statement_timeout", "The database query took too long.", False)
    unavailable = Failure(
        503, "database_unavailable", "The database is unavailable; retry shortly.", True
    )
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
