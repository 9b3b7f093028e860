"""Telemetry for Cloud Logging: one structured JSON line per request, and Server-Timing.

Cloud Run ships stdout to Cloud Logging and parses a JSON line into a structured entry:
`severity`, `message`, `httpRequest` and `logging.googleapis.com/trace` become first-class
fields, so requests group under their trace. Each line also carries what an operator of a
pooled function needs: time waiting for a connection, time in the database, rows, bytes and
the pool's state. No line ever holds a DSN, a password or a query parameter's value.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import flask

from lib import stats as request_stats
from lib.stats import Stats

# Trace headers come from the client as much as from Google's front end: anything that is
# not exactly one of these shapes is ignored (the request is logged without a trace).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=[0-9]+)?")
_MAX_SPAN_ID = 2**64 - 1


def trace_fields(headers: Any, project: str | None) -> dict[str, str]:
    """Cloud Logging trace correlation from X-Cloud-Trace-Context or W3C traceparent."""
    trace_id = span_id = None
    if m := _TRACEPARENT.fullmatch(headers.get("traceparent", "")):
        trace_id, span_id = m.group(1), m.group(2)
    elif m := _CLOUD_TRACE.fullmatch(headers.get("X-Cloud-Trace-Context", "")):
        trace_id = m.group(1).lower()
        span = int(m.group(2)) if m.group(2) else 0  # at most 20 digits: int() is safe
        span_id = f"{span:016x}" if 0 < span <= _MAX_SPAN_ID else None
    if trace_id is None or not trace_id.strip("0"):  # all zeros: no trace (W3C)
        return {}
    out = {
        "logging.googleapis.com/trace": f"projects/{project}/traces/{trace_id}"
        if project
        else trace_id
    }
    if span_id:
        out["logging.googleapis.com/spanId"] = span_id
    return out


def server_timing(stats: Stats) -> str:
    """pool, connect and connect_wait (each only when spent), db: phases that add up."""
    timing = f"pool;dur={stats.pool_ms:.2f}"
    if stats.connect_ms:
        timing += f", connect;dur={stats.connect_ms:.2f}"
    if stats.connect_wait_ms:
        timing += f", connect_wait;dur={stats.connect_wait_ms:.2f}"
    timing += f", db;dur={stats.query_ms:.2f}"
    return timing + (f", cache;desc={stats.cache}" if stats.cache else "")


def logged(pool_state: Callable[[], dict[str, Any]], project: str | None) -> Callable:
    """Decorate the handler: Server-Timing on the response, one log line when it is done
    (for a streamed response, once the last byte is sent), its trace in `project`."""

    def decorate(handler: Callable[[flask.Request], flask.Response]) -> Callable:
        @functools.wraps(handler)
        def wrapper(request: flask.Request) -> flask.Response:
            stats, token = request_stats.begin()
            try:
                response = handler(request)
            finally:
                request_stats.end(token)
            response.headers["Server-Timing"] = server_timing(stats)
            if response.is_streamed:
                response.call_on_close(
                    lambda: emit(request, response, stats, pool_state(), project)
                )
            else:
                stats.bytes = response.content_length or 0
                emit(request, response, stats, pool_state(), project)
            return response

        return wrapper

    return decorate


def severity(status: int) -> str:
    """A body the client left unread (`curl | head`) is the client's business: only the
    status decides."""
    if status >= 500 and status != 503:
        return "ERROR"
    return "WARNING" if status >= 400 else "INFO"


def emit(
    request: flask.Request,
    response: flask.Response,
    stats: Stats,
    pool: dict,
    project: str | None,
) -> None:
    latency = time.perf_counter() - stats.started
    status = response.status_code
    message = f"{request.method} {request.path[:100]} {status} {latency * 1000:.1f} ms"
    entry = {
        "severity": severity(status),
        "message": message + (f", truncated after {stats.bytes} bytes" if stats.cut else ""),
        "httpRequest": {
            "requestMethod": request.method,
            "requestUrl": request.path[:2000],  # no query string: parameters stay out of logs
            "status": status,
            "responseSize": str(stats.bytes),
            "latency": f"{latency:.6f}s",
            "userAgent": request.headers.get("User-Agent", "")[:500],
            "remoteIp": request.headers.get("X-Forwarded-For", request.remote_addr or "").split(
                ","
            )[0][:100],
            "protocol": request.environ.get("SERVER_PROTOCOL", ""),
        },
        "pool_wait_ms": round(stats.pool_ms, 3),
        "connect_ms": round(stats.connect_ms, 3),
        "connect_wait_ms": round(stats.connect_wait_ms, 3),
        "query_ms": round(stats.query_ms, 3),
        "queries": stats.queries,
        "pages": stats.pages,
        "rows": stats.rows,
        "bytes": stats.bytes,
        "retried": stats.retried,
        **({"cache": stats.cache} if stats.cache else {}),
        **({"cancelled": stats.cancelled} if stats.cancelled else {}),
        **({"ended": stats.ended} if stats.ended else {}),
        "pool": pool,
        **({"truncated": True, "cause": stats.cut} if stats.cut else {}),
        **trace_fields(request.headers, project),
    }
    sys.stdout.write(json.dumps(entry, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class JsonLogFormatter(logging.Formatter):
    """Every other log record as a one-line structured entry (severity + message)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        entry.update(getattr(record, "json_fields", {}))
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class StdoutJsonHandler(logging.Handler):
    """Writes to whatever sys.stdout is now (Cloud Run reads stdout; tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(self.format(record) + "\n")
        sys.stdout.flush()


def configure_logging() -> None:
    """Send this function's log records to stdout as JSON lines (idempotent)."""
    for name, level in (("lib", logging.INFO), ("sqlalchemy.pool", logging.WARNING)):
        logger = logging.getLogger(name)
        if not any(isinstance(h, StdoutJsonHandler) for h in logger.handlers):
            handler = StdoutJsonHandler()
            handler.setFormatter(JsonLogFormatter())
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False
