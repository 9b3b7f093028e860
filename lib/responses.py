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

from lib.failures import RETRY_AFTER_S, classify, describe
from lib.users_query import BadRequest, Listing, PageRequest, encode_cursor

log = logging.getLogger(__name__)

JSON = "application/json"
ALLOWED_METHODS = ("GET", "HEAD")


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


def health(pool: dict[str, Any], database: dict[str, Any]) -> flask.Response:
    """Liveness, the pool's counters and the session mode; never opens a connection."""
    body = {"status": "ok", "pool": pool, "database": database}
    return flask.Response(json.dumps(body), content_type=JSON)


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
        except Exception as exc:  # noqa: BLE001 - the one place every failure is answered
            return failure_response(exc)

    return wrapper


def failure_response(exc: Exception) -> flask.Response:
    """Render the classified failure; log its cause once, without secrets."""
    failure = classify(exc)
    log.log(
        failure.log_level,
        "%s: %s",
        failure.code,
        describe(exc),
        exc_info=exc if failure.traceback else None,
    )
    headers = {"Retry-After": str(RETRY_AFTER_S)} if failure.retryable else None
    return json_error(failure.status, failure.code, failure.message, headers)
