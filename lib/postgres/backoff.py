"""Every wait after a failed connect, in one place (lib/postgres/gate.py applies them).

- The interval after a failure that says the database is not there (refused, no route, a
  DNS failure, a timeout) or is misconfigured: requests are answered from that failure
  until it has passed, then one attempt tries again. 1 s after the first failure, doubled
  up to `longest` each time the retry that the interval allowed fails too. The connector
  paths double it to 30 s: each of their attempts costs two Admin API calls. The
  DATABASE_URL path keeps it at 1 s: an attempt costs the server a TCP connect or a
  login, the fleet is bounded by the connection budget, and a database that is back is
  then served within 1.25 s.
- The wait before trying again a database that is waking (57P03, a pooler waking it):
  requests wait for that attempt within their budget. 0.1 s doubling to 2 s on the
  DATABASE_URL path; the connector paths use their interval here too.
- Each is drawn up to a quarter later, or (a wake) in its second half, at random: instances
  that failed together (a fleet after an outage) come back apart.
"""

from __future__ import annotations

import random

FIRST_S = 1.0
MAX_S = 30.0
WAKE_FIRST_S, WAKE_MAX_S = 0.1, 2.0


def next_interval(interval: float, retry_at: float, now: float, longest: float = MAX_S) -> float:
    """The interval after a failure at `now`, given the current one (0 after a success) and
    when its retry was due. A failure inside the interval (a concurrent attempt) leaves it."""
    if not interval:
        return FIRST_S
    return min(interval * 2, longest) if now >= retry_at else interval


def jittered(interval: float) -> float:
    """The interval, up to a quarter longer, never shorter."""
    return interval * random.uniform(1, 1.25)  # noqa: S311 - not for security


def wake_wait(attempt: int) -> float:
    """The wait after the `attempt`-th (from 0) attempt in a row found the database waking:
    doubling from WAKE_FIRST_S up to WAKE_MAX_S, its second half random."""
    ceiling = min(WAKE_FIRST_S * 2**attempt, WAKE_MAX_S)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter
