"""HTTP responses: the users JSON envelope, and every failure as a JSON error with the right status.

Clients of a serverless function retry on 503 and give up on 4xx, so the status must say
what happened: the database is unreachable or the pool is full (503, retry soon), a query
ran too long (504), the request is wrong (4xx), or the function is misconfigured (500).
No response ever carries a traceback, a DSN or a password.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import flask
import pg8000.dbapi
from sqlalchemy import exc as sa_exc

from lib.config import ConfigError
from lib.engine import (
    ConnectError,
    ConnectionLost,
    PoolBusy,
    driver_error,
    is_disconnect,
    server_fields,
    sqlstate,
)
from lib.users_query import BadRequest, Listing, PageRequest, encode_cursor

log = logging.getLogger(__name__)

JSON = "application/json"
ALLOWED_METHODS = ("GET", "HEAD")
RETRY_AFTER_S = "1"
# SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html)
_UNAVAILABLE_CLASSES = ("08", "53", "57P")  # connection exception, resources, shutdown/startup
_QUERY_CANCELED = "57014"  # statement_timeout
_LOGIN_FAILED = ("28", "3D000")  # bad password / role, unknown database: misconfiguration


class HttpError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> flask.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return flask.Response(body, status=status, content_type=JSON, headers=headers)


def require_method(request: flask.Request) -> None:
    if request.method not in ALLOWED_METHODS:
        raise HttpError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed; use GET",
            {"Allow": ", ".join(ALLOWED_METHODS)},
        )


def users_json(listing: Listing, request: PageRequest) -> flask.Response:
    """`{"users": [...]}` (plus `next` when paging); streamed when it spans several pages."""
    head = '{"users":[' + listing.first.json
    if request.limit is not None:
        next_link = (
            f"?limit={request.limit}&cursor={encode_cursor(listing.first.last_id)}"
            if listing.first.more and listing.first.last_id is not None
            else None
        )
        response = flask.Response(
            head + '],"next":' + json.dumps(next_link) + "}", content_type=JSON
        )
        if next_link:
            response.headers["Link"] = f'<{next_link}>; rel="next"'
        return response
    if not listing.first.more:
        return flask.Response(head + "]}", content_type=JSON)

    def chunks() -> Iterator[bytes]:
        for text in itertools.chain([head], listing.rest(), ["]}"]):
            data = text.encode()
            listing.stats.bytes += len(data)
            yield data

    response = flask.Response(chunks(), content_type=JSON)
    response.call_on_close(listing.close)  # also when the body is never read (HEAD, client gone)
    return response


def health(pool: dict[str, Any]) -> flask.Response:
    """Liveness plus the pool's counters; never opens a connection."""
    return flask.Response(json.dumps({"status": "ok", "pool": pool}), content_type=JSON)


def json_errors(handler: Callable[[flask.Request], flask.Response]) -> Callable:
    """Turn every exception from the handler into a JSON error response."""

    @functools.wraps(handler)
    def wrapper(request: flask.Request) -> flask.Response:
        try:
            return handler(request)
        except HttpError as exc:
            return json_error(exc.status, exc.code, exc.message, exc.headers)
        except BadRequest as exc:
            return json_error(400, "bad_request", str(exc))
        except ConfigError as exc:
            log.error("configuration error: %s", exc)
            return json_error(500, "configuration_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - the one place every failure is answered
            return database_error(exc)

    return wrapper


def database_error(exc: Exception) -> flask.Response:
    """Map a failure to 503 (retry), 504 (timeout) or 500, logging the cause without secrets."""
    retry = {"Retry-After": RETRY_AFTER_S}
    if isinstance(exc, sa_exc.TimeoutError | PoolBusy):
        log.warning("pool exhausted: no connection free within DB_POOL_TIMEOUT or DB_MAX_WAITING")
        return json_error(
            503, "pool_exhausted", "All database connections are busy; retry shortly.", retry
        )
    code = sqlstate(exc)
    if code == _QUERY_CANCELED:
        log.warning("statement timeout")
        return json_error(504, "statement_timeout", "The database query took too long.")
    if code is not None and code.startswith(_LOGIN_FAILED):
        log.error("database login failed: %s", _describe(exc))
        return json_error(
            500, "configuration_error", "The function cannot log in to its database (see its log)."
        )
    if _is_unavailable(exc, code):
        log.warning("database unavailable: %s", _describe(exc))
        return json_error(
            503, "database_unavailable", "The database is unavailable; retry shortly.", retry
        )
    # A traceback only for what is neither a database nor a driver error: a bug of ours.
    is_db_error = isinstance(exc, sa_exc.DBAPIError | pg8000.dbapi.Error)
    log.error("unexpected error: %s", _describe(exc), exc_info=not is_db_error)
    return json_error(500, "internal", "Internal error.")


def _is_unavailable(exc: Exception, code: str | None) -> bool:
    if code is not None:
        return code.startswith(_UNAVAILABLE_CLASSES)
    # Connecting failed (network, TLS, Cloud SQL connector), or a connection died under us.
    return isinstance(exc, ConnectError | ConnectionLost | sa_exc.DBAPIError) or is_disconnect(exc)


def _describe(exc: BaseException) -> str:
    """Exception type, SQLSTATE and server message: never the statement's DSN or parameters."""
    orig, fields = driver_error(exc), server_fields(exc)
    if fields:
        return f"{type(orig).__name__} {fields.get('C')}: {fields.get('M')}"
    return f"{type(orig).__name__}: {orig}"
