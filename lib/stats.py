"""What one request did, filled in as it runs: where its time went, what it read and sent.

The core writes it (the pool wait, the statements, the cache's outcome) and the edge reads it
for Server-Timing and the request's log line (lib/http/telemetry.py). One per request, held
in a context variable, so no signature has to carry it.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

from lib.postgres import connect_time


@dataclass
class Stats:
    started: float = field(default_factory=time.perf_counter)
    pool_wait_ms: float = 0.0  # checkouts, connects included
    # Made with the Stats, in the request's context: its connects are counted from then on.
    connects: connect_time.ConnectTime = field(default_factory=connect_time.begin)
    query_ms: float = 0.0
    queries: int = 0
    pages: int = 0  # page statements (a listing's rows)
    rows: int = 0
    bytes: int = 0
    retried: bool = False
    cut: str | None = None  # why a response ended before its last byte (the client's doing)
    cache: str | None = None  # the response cache: hit, miss, skip (no probe) or off
    cancelled: str | None = None  # why a running statement was cancelled (lib/postgres/watch.py)
    ended: str | None = None  # "limit": the listing ended with `next` at the byte limit

    @property
    def connect_ms(self) -> float:
        """In this request's own connect attempts."""
        return self.connects.connect_ms

    @property
    def connect_wait_ms(self) -> float:
        """Waiting for another request's connect attempt to end (lib/postgres/gate.py)."""
        return self.connects.wait_ms

    @property
    def pool_ms(self) -> float:
        """Waiting for the pool itself: checkouts less the connects inside them (a failed
        checkout adds nothing to pool_wait_ms, so this never goes below 0)."""
        return max(self.pool_wait_ms - self.connect_ms - self.connect_wait_ms, 0.0)


_current: contextvars.ContextVar[Stats] = contextvars.ContextVar("request_stats")


def current() -> Stats:
    """This request's Stats (a throwaway one outside a request, e.g. in a script)."""
    try:
        return _current.get()
    except LookupError:
        return Stats()


def begin() -> tuple[Stats, contextvars.Token[Stats]]:
    """A new request's Stats, current until `end(token)`."""
    stats = Stats()
    return stats, _current.set(stats)


def end(token: contextvars.Token[Stats]) -> None:
    _current.reset(token)
