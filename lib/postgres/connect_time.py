"""Where a request's connect time went: in its own connect attempts (`connect_ms`), and in
waiting for another request's attempt (`wait_ms`, lib/postgres/gate.py).

The gate runs inside SQLAlchemy's pool, which knows nothing of requests, so it adds to the
record current in this context: lib/stats.py's Stats makes one current for each request,
which lib/http/telemetry.py reports in Server-Timing and the log line.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass
class ConnectTime:
    connect_ms: float = 0.0
    wait_ms: float = 0.0


_current: contextvars.ContextVar[ConnectTime | None] = contextvars.ContextVar(
    "connect_time", default=None
)


def begin() -> ConnectTime:
    """A new record, current in this context from now on (one per request)."""
    record = ConnectTime()
    _current.set(record)
    return record


def add(connect_s: float = 0.0, wait_s: float = 0.0) -> None:
    """Add to the current record (none outside a request: nothing to report to)."""
    record = _current.get()
    if record is not None:
        record.connect_ms += connect_s * 1000
        record.wait_ms += wait_s * 1000
