"""HTTP responses: the core's outcome rendered (the listing, its caching headers, 304), the
health answer, and every failure as a JSON error with the right status.

Clients of a serverless function retry on 503 and give up on 4xx, so the status must say
what happened (lib/http/statuses.py). No response ever carries a traceback, a DSN or a
password. A listing is known whole before its status is sent (lib/listing/spool.py), so it
always has a Content-Length, and no database failure can arrive after its 200.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from lib import stats as request_stats
from lib.errors import BadRequest
from lib.http.request import HttpError
from lib.http.statuses import STATUS
from lib.listing.outcome import Listed, NotModified, Outcome
from lib.postgres.diagnosis import RETRY_AFTER_S, classify, describe
from lib.postgres.watch import CLIENT_IDLE, Watch
from lib.stats import Stats

log = logging.getLogger(__name__)

JSON = "application/json"
# Listings hold emails: no shared cache may keep them (private), and a client that keeps one
# must ask again each time (no-cache), when a matching ETag makes the answer a bodiless 304.
LISTING_CACHE = "private, no-cache"
NO_STORE = "no-store"  # errors and /healthz describe one moment: never reuse them
# A spooled body goes to the server in slices: each one the client takes resets the idle
# clock (CLIENT_IDLE_TIMEOUT), so a client that reads slowly but steadily is never cut.
SLICE_BYTES = 64 * 1024


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> flask.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    response = flask.Response(body, status=status, content_type=JSON, headers=headers)
    response.headers["Cache-Control"] = NO_STORE
    return response


def framework_error(exc: HTTPException) -> flask.Response:
    """What functions-framework answers itself (its 404 for /robots.txt), as JSON too."""
    status = exc.code or 500
    return json_error(status, "not_found" if status == 404 else "bad_request", exc.name)


def listing(outcome: Outcome, watch: Watch) -> flask.Response:
    """The core's answer: a 304, or the whole body with its length, encoding, ETag and, for
    a listing that continues, `Link: <next>; rel="next"`. A body larger than one slice goes
    out slice by slice, each slice resetting the client's idle clock."""
    headers = {"Cache-Control": LISTING_CACHE, "Vary": "Accept-Encoding", "ETag": outcome.etag}
    if isinstance(outcome, NotModified):
        return flask.Response(status=304, content_type=JSON, headers=headers)
    if outcome.gzip:
        headers["Content-Encoding"] = "gzip"
    if outcome.next:
        headers["Link"] = f'<{outcome.next}>; rel="next"'
    body = outcome.body
    if body.size <= SLICE_BYTES:
        data = body.read()
        body.close()
        return flask.Response(data, content_type=JSON, headers=headers)
    headers["Content-Length"] = str(body.size)
    slices = _slices(outcome, watch, request_stats.current())  # sent after the handler returns
    response = flask.Response(slices, content_type=JSON, headers=headers)
    response.call_on_close(body.close)  # also when the body is never read (HEAD, client gone)
    return response


def _slices(outcome: Listed, watch: Watch, stats: Stats) -> Iterator[bytes]:
    watch.streaming()
    try:
        for piece in outcome.body.slices(SLICE_BYTES):
            stats.bytes += len(piece)
            yield piece
            watch.streaming()  # the server has handed the slice to the client
    except GeneratorExit:  # the server could not write: the client went away or idled
        stats.cut = (
            f"client_idle: the client read nothing for {watch.idle_write_s:g} s"
            if watch.reason == CLIENT_IDLE
            else "client_closed: the client closed the connection"
        )
        raise
    finally:
        watch.done()


def health(pool: dict[str, Any], database: dict[str, Any], cache: dict[str, Any]) -> flask.Response:
    """Liveness, the pool's counters, the session mode and the response cache's state;
    never opens a connection."""
    body = json.dumps({"status": "ok", "pool": pool, "database": database, "cache": cache})
    return flask.Response(body, content_type=JSON, headers={"Cache-Control": NO_STORE})


def unread_body(handler: Callable[[flask.Request], flask.Response]) -> Callable:
    """Answer a request that carries a body without waiting for that body.

    This function never reads a request body, but functions-framework reads it whole after
    the handler returns (so the connection stays usable), unless the response is streamed.
    A client that declares a body and never sends it would hold a server thread, its answer
    unsent, for as long as it likes. Handed over as an iterator, the answer is sent at once
    and gunicorn drains the body itself for at most 5 s, then closes the connection.
    """

    @functools.wraps(handler)
    def wrapper(request: flask.Request) -> flask.Response:
        response = handler(request)
        has_body = request.content_length or "Transfer-Encoding" in request.headers
        if has_body and not response.is_streamed:
            response.response = iter(response.response)  # Content-Length stays as it was
        return response

    return wrapper


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
    return json_error(STATUS[failure.code], failure.code, failure.message, headers)
