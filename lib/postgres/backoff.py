"""The back-off after failed connects, shared by the connector paths' gate
(lib/connectors/gate.py) and the instance choice (lib/connectors/instances.py): 1 s after the
first failure, doubled up to 30 s each time the retry that the interval allowed fails too."""

from __future__ import annotations

FIRST_S = 1.0
MAX_S = 30.0


def next_interval(interval: float, retry_at: float, now: float) -> float:
    """The interval after a failure at `now`, given the current one (0 after a success) and
    when its retry was due. A failure inside the interval (a concurrent attempt) leaves it."""
    if not interval:
        return FIRST_S
    return min(interval * 2, MAX_S) if now >= retry_at else interval
