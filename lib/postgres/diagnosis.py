"""Every failure, from any connection path, classified once: what it means, and who can act.

What may pass by itself (the server restarting, a network cut, the pool full) is retryable;
what retrying cannot fix (a wrong password, a missing database, table or grant, TLS or
channel binding the server cannot meet, a host name that never resolved) is a
`configuration_error` that says what to fix, so nobody retries a deployment mistake
forever. Which HTTP status each code gets is the edge's business (lib/http/statuses.py). A
pooler's or proxy's own errors are read by their message (lib/postgres/pooler_messages.py).

Only our own exceptions (lib/errors.py) are read here: `causes` has lib/postgres/driver.py
translate the driver's. The edge answers what `classify` returns; lib/postgres/gate.py waits
for a database that `may_pass` says is waking, and answers at once while it is down.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

from lib.errors import (
    Cancelled,
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectMayPass,
    ConnectMisconfigured,
    DatabaseError,
    Disconnected,
    PoolBusy,
    ServerError,
)
from lib.postgres import driver
from lib.postgres.pooler_messages import pooler_rule

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Failure:
    code: str
    message: str  # for the client: what happened and, when misconfigured, what to fix
    retryable: bool  # it may pass: the client may retry after RETRY_AFTER_S
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
    "42703": "a column does not exist: check the setting that lists the served columns",
    "08P01": "the server refused a connection parameter: check the options of DATABASE_URL",
    "42704": "the server does not know a setting sent at connect: check the options of "
    "DATABASE_URL (PostgreSQL older than 14 has no idle_session_timeout: set DB_IDLE_TIMEOUT=0)",
    "0A000": "the server does not support a requested feature: check DATABASE_URL",
}
_UNAVAILABLE = ("08", "53", "57P", "58", "40001", "40P01", "55P03")
QUERY_CANCELED = "57014"  # statement_timeout
_STARTING = "57P03"  # cannot_connect_now: the server is starting up, or in recovery

_UNAVAILABLE_MESSAGE = "The database is unavailable; retry shortly."
_POOLER_BUSY_MESSAGE = (
    "The database's pooler or proxy is full, or waiting for its database to start or come "
    "back; this may pass: retry shortly."
)


def causes(exc: BaseException) -> list[BaseException]:
    """`exc`, then what it wraps (SQLAlchemy's .orig, explicit __cause__), outermost first,
    each of the driver's exceptions as ours."""
    chain: list[BaseException] = []
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        chain.append(driver.translate(current) or current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def _own(exc: BaseException) -> BaseException:
    """The exception itself, or the driver's that SQLAlchemy wrapped, as ours."""
    inner = getattr(exc, "orig", None) or exc
    return driver.translate(inner) or inner


def server_error(exc: BaseException) -> ServerError | None:
    """The server's error this is (or SQLAlchemy wrapped), else None."""
    own = _own(exc)
    return own if isinstance(own, ServerError) else None


def sqlstate(exc: BaseException) -> str | None:
    error = server_error(exc)
    return error.sqlstate if error else None


def is_disconnect(exc: BaseException) -> bool:
    """Does this error mean the connection is unusable? The driver lost its socket (some
    socket failures escape it as OSError), or the server said goodbye with SQLSTATE
    57P01-57P03 (shutdown) or class 08 before closing."""
    if isinstance(_own(exc), Disconnected | OSError):
        return True
    code = sqlstate(exc) or ""
    return code.startswith("08") or code in ("57P01", "57P02", "57P03")


def misconfiguration(exc: BaseException) -> str | None:
    """What to fix, when retrying cannot help; None when the failure may pass by itself."""
    for cause in causes(exc):
        if isinstance(cause, ConfigError | ConnectMisconfigured):
            return str(cause)
        if isinstance(cause, ConnectMayPass):
            return None
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the server's TLS certificate was not accepted ({cause.verify_message}): "
                "check sslmode and sslrootcert"
            )
        if isinstance(cause, ServerError):
            rule = pooler_rule(cause)
            if rule is not None and rule.fix is None:
                return None  # a pooler full or waking: it may pass, whatever its SQLSTATE
            code = cause.sqlstate
            advice = rule.fix if rule else _MISCONFIGURED.get(code) or _MISCONFIGURED.get(code[:2])
            if advice:
                return f"{advice} (SQLSTATE {code}: {cause.message})"
    return None


def _pooler_busy(exc: BaseException) -> bool:
    """A pooler or proxy said it is full, slow, cut off from its database or waking it."""
    for cause in causes(exc):
        if isinstance(cause, ServerError):
            rule = pooler_rule(cause)
            return rule is not None and rule.fix is None
    return False


def may_pass(exc: BaseException) -> bool:
    """Does a failed connect say the database is on its way, so that requests wait for the
    next attempt within their connect budget? Yes for a server starting up (57P03), a pooler
    full or waking its database (Neon's wake); never for a misconfiguration. A database that
    is not there (refused, no Unix socket, no route, a DNS failure, a reset) or did not answer
    in time is down: answered at once until the next attempt is due."""
    if misconfiguration(exc) is not None:
        return False
    if _pooler_busy(exc):
        return True
    return any(isinstance(c, ServerError) and c.sqlstate == _STARTING for c in causes(exc))


def timed_out(exc: BaseException) -> bool:
    """Did this fail by running out of time (a connect, a login, a read)?"""
    return any(isinstance(c, TimeoutError) for c in causes(exc))


def classify(exc: BaseException) -> Failure:
    """The one table: exception -> code, message, retryable."""
    if isinstance(exc, Cancelled):
        if exc.reason == "deadline":
            return Failure("deadline_exceeded", "The request ran past its deadline.", False)
        return Failure("client_closed_request", "The client went away.", False, logging.INFO)
    if isinstance(exc, sa_exc.TimeoutError | PoolBusy):
        return Failure("pool_exhausted", "All database connections are busy; retry shortly.", True)
    if (advice := misconfiguration(exc)) is not None:
        return Failure("configuration_error", advice, False, logging.ERROR)
    chain = causes(exc)
    code = next((c.sqlstate for c in chain if isinstance(c, ServerError)), None)
    if code == QUERY_CANCELED:
        return Failure("statement_timeout", "The database query took too long.", False)
    if _pooler_busy(exc):
        return Failure("database_unavailable", _POOLER_BUSY_MESSAGE, True)
    unavailable = Failure("database_unavailable", _UNAVAILABLE_MESSAGE, True)
    if code is not None and code.startswith(_UNAVAILABLE):
        return unavailable
    if any(isinstance(c, ConnectError | ConnectionLost | Disconnected | OSError) for c in chain):
        return unavailable
    if is_disconnect(exc):
        return unavailable
    # A database error we have no rule for is the database's; anything else is a bug of ours.
    is_db_error = any(isinstance(c, sa_exc.DBAPIError | DatabaseError) for c in chain)
    return Failure("internal", "Internal error.", False, logging.ERROR, not is_db_error)


def describe(exc: BaseException) -> str:
    """Exception type, SQLSTATE and server message: never a DSN, a password or parameters."""
    parts = []
    for cause in causes(exc):
        if isinstance(cause, ServerError):
            parts.append(f"{type(cause).__name__} {cause.sqlstate}: {cause.message}")
        elif not isinstance(cause, sa_exc.StatementError):  # its text holds the statement
            parts.append(f"{type(cause).__name__}: {cause}")
    return " <- ".join(dict.fromkeys(parts)) or type(exc).__name__
