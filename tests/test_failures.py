"""`classify`, the one table from failure to status, read as a table: our own exceptions in
(lib/errors.py, as lib/postgres/driver.py translates the driver's), status and code out. No driver
and no database: each row is built by hand. Poolers' messages: tests/test_pooler_messages.py."""

from __future__ import annotations

import ssl

import pytest
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
from lib.http.statuses import STATUS
from lib.postgres.diagnosis import classify, describe


def server(code: str, message: str = "...") -> ServerError:
    return ServerError({"S": "ERROR", "C": code, "M": message})


def caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def wrapped(orig: BaseException) -> sa_exc.DBAPIError:
    """As SQLAlchemy raises the driver's error from its own layer (the pool's first connect)."""
    return sa_exc.DBAPIError("SELECT 1", None, orig)


def certificate_refused() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    return error


# (failure, status, code, a fragment of the message or None)
TABLE = [
    # the pool
    (PoolBusy(), 503, "pool_exhausted", "busy"),
    (sa_exc.TimeoutError("QueuePool limit"), 503, "pool_exhausted", "busy"),
    # settings and connects that only a fix can cure
    (ConfigError("DB_POOL_SIZE", "not a number"), 500, "configuration_error", "DB_POOL_SIZE"),
    (ConnectMisconfigured("host 'db' does not resolve"), 500, "configuration_error", "resolve"),
    (certificate_refused(), 500, "configuration_error", "sslrootcert"),
    (server("28P01"), 500, "configuration_error", "user and password"),
    (server("28000"), 500, "configuration_error", "user and password"),
    (server("3D000"), 500, "configuration_error", "database name"),
    (server("42501"), 500, "configuration_error", "grant"),
    (server("42P01"), 500, "configuration_error", "table"),
    (server("42703"), 500, "configuration_error", "served columns"),
    (server("42704"), 500, "configuration_error", "DB_IDLE_TIMEOUT"),
    (caused(ConnectError("connect failed"), server("28P01")), 500, "configuration_error", None),
    (wrapped(server("3D000")), 500, "configuration_error", "database name"),
    # what may pass by itself
    (caused(ConnectMayPass("no host served"), server("28P01")), 503, "database_unavailable", None),
    (caused(ConnectError("connect failed"), TimeoutError()), 503, "database_unavailable", None),
    (server("57P01"), 503, "database_unavailable", "retry"),
    (server("57P03"), 503, "database_unavailable", "retry"),
    (server("53300"), 503, "database_unavailable", "retry"),
    (server("08006"), 503, "database_unavailable", "retry"),
    (server("40001"), 503, "database_unavailable", "retry"),
    (server("55P03"), 503, "database_unavailable", "retry"),
    (Disconnected("network error"), 503, "database_unavailable", "retry"),
    (wrapped(Disconnected("network error")), 503, "database_unavailable", "retry"),
    (ConnectionLost("reset"), 503, "database_unavailable", "retry"),
    (ConnectionRefusedError(111, "refused"), 503, "database_unavailable", "retry"),
    (TimeoutError("timed out"), 503, "database_unavailable", "retry"),
    # a statement that ran too long
    (server("57014"), 504, "statement_timeout", "too long"),
    # the database's error we have no rule for, and a bug of ours
    (server("22P02"), 500, "internal", "Internal error"),
    (DatabaseError("unexpected"), 500, "internal", "Internal error"),
    (RuntimeError("a bug"), 500, "internal", "Internal error"),
]  # fmt: skip


@pytest.mark.parametrize(("failure", "status", "code", "fragment"), TABLE, ids=repr)
def test_the_table(failure, status, code, fragment):
    result = classify(failure)
    assert (STATUS[result.code], result.code) == (status, code)
    assert result.retryable == (status == 503)
    if fragment:
        assert fragment in result.message


def test_only_a_bug_of_ours_is_logged_with_a_traceback():
    assert classify(RuntimeError("a bug")).traceback
    assert not classify(server("22P02")).traceback
    assert not classify(DatabaseError("unexpected")).traceback


def test_describe_names_types_and_sqlstates_never_the_statement():
    error = sa_exc.DBAPIError("SELECT secret FROM t WHERE pw = 'hunter2'", None, server("42P01"))
    text = describe(error)
    assert "ServerError 42P01" in text
    assert "hunter2" not in text


def test_every_code_classify_can_return_has_a_status():
    """The edge's table (lib/http/statuses.py) knows every code the meaning's table gives."""
    codes = {classify(failure).code for failure, *_ in TABLE}
    codes |= {classify(Cancelled("deadline")).code, classify(Cancelled("client_left")).code}
    assert codes <= set(STATUS), codes - set(STATUS)
