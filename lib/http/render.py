"""HTTP responses: the two routes, the users JSON envelope (gzip, ETag, caching headers), and
every failure as a JSON error with the right status.

Clients of a serverless function retry on 503 and give up on 4xx, so the status must say
what happened: the database is unreachable or the pool is full (503, retry soon), a query
ran too long (504), the request is wrong (4xx), or the function is misconfigured (500).
No response ever carries a traceback, a DSN or a password; once a streamed listing's status
is sent, a failure cuts the response so that no client can mistake part for the whole.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from lib.errors import Cancelled
from lib.http import compression, links
from lib.listing.body import listing_body
from lib.listing.pages import Listing
from lib.listing.paging import MAX_LIMIT, BadRequest, PageRequest
from lib.postgres.diagnosis import RETRY_AFTER_S, classify, describe
from lib.postgres.watch import CLIENT_IDLE, DEADLINE

log = logging.getLogger(__name__)

JSON = "application/json"
ROUTES = ("/", "/healthz")  # exact: "/healthz/" is another path, and a 404
ALLOWED_METHODS = ("GET", "HEAD")
# Listings hold emails: no shared cache may keep them (private), and a client that keeps one
# must ask again each time (no-cache), when a matching ETag makes the answer a bodiless 304.
LISTING_CACHE = "private, no-cache"
NO_STORE = "no-store"  # errors and /healthz describe one moment: never reuse them
# A streamed page goes to the server in slices: each one the client takes resets the idle
# clock (CLIENT_IDLE_TIMEOUT), so a client that reads slowly but steadily is never cut.
SLICE_BYTES = 64 * 1024


class HttpError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class StreamCut(Exception):
    """A streamed response failed after its status was sent (already logged)."""


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> flask.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    response = flask.Response(body, status=status, content_type=JSON, headers=headers)
    response.headers["Cache-Control"] = NO_STORE
    return response


def route(request: flask.Request) -> str:
    """The path this request is for: 404 for any other path (before any database work),
    405 with Allow for a method other than GET and HEAD."""
    if request.path not in ROUTES:
        raise HttpError(404, "not_found", "no such path; the paths are / and /healthz")
    if request.method not in ALLOWED_METHODS:
        raise HttpError(
            405,
            "method_not_allowed",
            f"{request.method[:20]} is not allowed; use GET or HEAD",
            {"Allow": ", ".join(ALLOWED_METHODS)},
        )
    return request.path


def framework_error(exc: HTTPException) -> flask.Response:
    """What functions-framework answers itself (its 404 for /robots.txt), as JSON too."""
    status = exc.code or 500
    return json_error(status, "not_found" if status == 404 else "bad_request", exc.name)


def listing_json(
    request: flask.Request,
    listing: Listing,
    page: PageRequest,
    max_bytes: int | None = None,
    etag: str | None = None,
) -> flask.Response:
    """`{"users": [...]}`, keyed by the listing's resource name (plus `next` when paging);
    streamed when it spans several pages. `etag`: the validator's (lib/listing/cached.py),
    else the ETag is a hash of the bytes sent."""
    built = whole_body(request, listing, page)
    if built is None:
        return streamed(request, listing, listing_head(listing), max_bytes, etag)
    body, headers = built
    return whole(request, body, headers, etag)


def listing_head(listing: Listing) -> str:
    return "{" + json.dumps(listing.resource.name) + ":[" + listing.first.json


def whole_body(
    request: flask.Request, listing: Listing, page: PageRequest
) -> tuple[bytes, dict[str, str]] | None:
    """The whole body and its headers besides the ETag's, or None when the listing streams."""
    head = listing_head(listing)
    if page.limit is not None:
        next_link = (
            links.next_page(request, page.limit, listing.first.last_id)
            if listing.first.more and listing.first.last_id is not None
            else None
        )
        body = head + '],"next":' + json.dumps(next_link) + "}"
        link = {"Link": f'<{next_link}>; rel="next"'} if next_link else {}
        return body.encode(), link
    if not listing.first.more:
        return (head + "]}").encode(), {}
    return None


def whole(
    request: flask.Request,
    body: bytes,
    headers: dict[str, str] | None = None,
    etag: str | None = None,
    gzip: Callable[[bytes], bytes] = compression.compress,
) -> flask.Response:
    """A listing sent in one piece: gzip if the client accepts it (`gzip` compresses it),
    a strong ETag (`etag`, else a hash of the bytes sent, so the gzip and identity
    representations differ), 304 when the client has them."""
    headers = {"Cache-Control": LISTING_CACHE, "Vary": "Accept-Encoding", **(headers or {})}
    if compression.use_gzip(request.headers.get("Accept-Encoding"), len(body)):
        body = gzip(body)
        headers["Content-Encoding"] = "gzip"
    headers["ETag"] = etag or '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    if matches(request, headers["ETag"]):
        return flask.Response(status=304, content_type=JSON, headers=headers)
    return flask.Response(body, content_type=JSON, headers=headers)


def matches(request: flask.Request, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110, 13.1.2); "*" matches any."""
    return request.if_none_match.contains_weak(etag.removeprefix("W/").strip('"'))


def not_modified(request: flask.Request, etag: str, may_stream: bool) -> flask.Response:
    """A 304 known from the validator alone, nothing rendered. A listing that may stream
    sends its ETag weak when it does: answer in the form the client holds."""
    if may_stream and not request.if_none_match.contains(etag.strip('"')):
        etag = "W/" + etag
    headers = {"Cache-Control": LISTING_CACHE, "Vary": "Accept-Encoding", "ETag": etag}
    return flask.Response(status=304, content_type=JSON, headers=headers)


def streamed(
    request: flask.Request,
    listing: Listing,
    head: str,
    max_bytes: int | None,
    etag: str | None = None,
) -> flask.Response:
    """Every user, page by page (gzip-encoded page by page if accepted), ended early with
    `next` before `max_bytes` of JSON (lib/listing/body.py); with the weak `etag` of the first
    page's validator if given, known before the first byte.

    Past the first page the status line is sent, so a failure can no longer become an
    error status: the response is cut (see `cut`), and the log line says so.
    """
    gzipped = compression.use_gzip(request.headers.get("Accept-Encoding"), None)
    gzip = compression.GzipStream() if gzipped else None
    stats = listing.stats
    headers = {"Cache-Control": LISTING_CACHE, "Vary": "Accept-Encoding"}
    if gzip:
        headers["Content-Encoding"] = "gzip"
    if etag:
        headers["ETag"] = etag
    # "*": any current representation (RFC 9110, 13.1.2)
    if request.if_none_match.star_tag or (etag and matches(request, etag)):
        listing.close()
        return flask.Response(status=304, content_type=JSON, headers=headers)

    watch = listing.watch

    def next_url(last_id: int) -> str:
        return links.next_page(request, MAX_LIMIT, last_id)

    def pages() -> Iterator[bytes]:
        body = listing_body(head, listing.first.last_id, listing.rest(), max_bytes, next_url)
        for data in body:
            yield gzip.page(data) if gzip else data
        if gzip:
            yield gzip.finish(b"")

    def chunks() -> Iterator[bytes]:
        listing.prefetch(listing.first)  # the next page renders while the first goes out
        watch.streaming()
        try:
            for data in pages():
                for start in range(0, len(data), SLICE_BYTES):
                    piece = data[start : start + SLICE_BYTES]
                    stats.bytes += len(piece)
                    yield piece
                    watch.streaming()  # the server has handed the slice to the client
        except GeneratorExit:  # the server could not write: the client went away or idled
            stats.client_left = True
            stats.cut = (
                f"client_idle: the client read nothing for {watch.idle_write_s:g} s"
                if watch.reason == CLIENT_IDLE
                else "client_closed: the client closed the connection"
            )
            raise
        except Exception as exc:  # noqa: BLE001 - logged with the request, then the cut
            failure = classify(exc)
            stats.cut = f"{failure.code}: {describe(exc)}"
            stats.client_left = isinstance(exc, Cancelled) and exc.reason != DEADLINE
            cut(request.environ)
        finally:
            watch.done()

    response = flask.Response(chunks(), content_type=JSON, headers=headers)
    response.call_on_close(listing.close)  # also when the body is never read (HEAD, client gone)
    return response


def cut(environ: dict[str, Any]) -> None:
    """End a response whose status line is sent so that no client can take it for complete.

    HTTP/1.1's only signal left is a chunked body without its last chunk (RFC 9112, 7.1).
    Under gunicorn (functions-framework, Cloud Run) the socket is shut down here, so the
    server's write of the last chunk fails quietly (EPIPE) and it closes the connection,
    instead of printing a plain-text traceback for an exception already logged as JSON.
    Any other WSGI server aborts the response when the body iterator raises.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        raise StreamCut("response cut")
    with contextlib.suppress(OSError):  # the client may be gone already
        sock.shutdown(socket.SHUT_RDWR)


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
    return json_error(failure.status, failure.code, failure.message, headers)
