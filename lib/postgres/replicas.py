"""What this process knows of the servers it reads from: which are standbys, how far each
standby lags, which are passed over and why, and when reads should leave a fallback server.

Lag is measured on the standby, from what it received and what it replayed, never from
`now() - pg_last_xact_replay_timestamp()` (which grows without bound while the primary is
idle). Each check reads, in one statement of a few shared-memory reads:

- `pg_last_wal_receive_lsn()` and `pg_last_wal_replay_lsn()`: replay has reached what was
  received, or not;
- whether a WAL receiver runs (`pg_stat_wal_receiver` shows its pid to any role; its
  `status` only to roles with pg_read_all_stats, which then also count a receiver that is
  not `streaming` as disconnected);
- `pg_get_wal_replay_pause_state()` (for the reason given) and the age of the last
  replayed commit.

The standby is known to show everything it had received by the time of an earlier check
once its replay position passes that check's receive position, and a receiver that was
running at that check means nothing else was missing then. So its lag is at most the time
since the latest such check (`visible_as_of`), and at most the age of its last replayed
commit; the smaller of the two is used. An idle primary: replay equals receive at every
check, the lag is 0. Paused replay: receive moves on, replay does not, the lag grows from
the last check it had caught up. A stopped receiver: `visible_as_of` stops at the last
check it ran.

A standby whose lag exceeds DB_MAX_REPLICA_LAG is passed over like a down one: connects go
elsewhere, and its pooled connections are retired at checkout instead of being read from.
Checks run at most once per check interval per server (DB_MAX_REPLICA_LAG / 4, at most 1 s),
at a checkout of a connection to it, one connect or checkout claiming each check. So the
oldest data a response can show is the bound plus one check interval.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lib.postgres import driver

log = logging.getLogger(__name__)

# One round trip, on the standby: what it received and replayed, its receiver, its pause.
CHECK_SQL = (
    "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
    "pg_get_wal_replay_pause_state(), "
    "EXISTS (SELECT FROM pg_stat_wal_receiver), (SELECT status FROM pg_stat_wal_receiver), "
    "extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"
)
MAX_CHECK_INTERVAL_S = 1.0
# A connection on a fallback server (the primary under prefer-standby) is retired at its
# first checkout this long after it opened, so the next connect tries the standbys again.
FAILBACK_S = 5.0


def lsn(text: str | None) -> int | None:
    """A pg_lsn's text ('16/B374D848') as a number."""
    if text is None:
        return None
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def is_standby(conn: Any) -> bool:
    """Is this connection's server a hot standby? PostgreSQL 14+ reports in_hot_standby at
    login (no round trip); older servers are asked."""
    reported = driver.parameter(conn, "in_hot_standby")
    if reported is not None:
        return reported == "on"
    return bool(driver.fetch(conn, "SELECT pg_is_in_recovery()")[0][0])


@dataclass
class _Server:
    standby: bool | None = None
    checked_at: float = 0.0  # monotonic; 0 = never checked
    checking: bool = False  # a check of it is running
    lag: float | None = None  # seconds, as of checked_at
    lagging: str | None = None  # why it is passed over for lag
    down: str | None = None  # why it is passed over as unreachable (the connector paths)
    since: float = 0.0  # passed over since
    visible_as_of: float | None = None
    # (check time, receive position) of checks whose received WAL is not replayed yet
    pending: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))


class Replicas:
    """This process's servers, by label (a DATABASE_URL host, a connector's instance name)."""

    def __init__(self, max_lag: float | None) -> None:
        self.max_lag = max_lag
        self.interval = min(MAX_CHECK_INTERVAL_S, max_lag / 4) if max_lag else 0.0
        self._lock = threading.Lock()
        self._servers: dict[str, _Server] = {}
        self._taken_back_at = 0.0  # when a passed-over server last served again
        self._opened: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

    # --- connects ---------------------------------------------------------------------------

    def passed_over(self, label: str) -> str | None:
        """Why a connect should not dial `label` now (it lags, and no check of it is due),
        or None."""
        with self._lock:
            server = self._servers.get(label)
            if server is None or server.lagging is None or self._due(server):
                return None
            return server.lagging

    def admit(self, conn: Any, label: str, fallback: bool = False) -> str | None:
        """A connect opened `conn` to `label` and its role matched. Why it must not serve (a
        standby lagging past the bound), or None; then it is remembered for `opened`.
        `fallback`: opened in prefer-standby's last pass (a standby would be preferred)."""
        standby = is_standby(conn) if self.max_lag or fallback else None
        with self._lock:
            server = self._servers.setdefault(label, _Server())
            server.standby = standby
        reason = self._check_if_due(conn, label) if standby else None
        if reason is None:
            self._opened[conn] = {
                "server": label,
                "standby": standby,
                "fallback": fallback and not standby,
                "opened_at": time.monotonic(),
            }
        return reason

    def opened(self, conn: Any) -> dict[str, Any]:
        """What `admit` learned of a new connection, for its pool record's `info`."""
        return self._opened.pop(conn, {})

    def down(self, label: str, reason: str, interval: float) -> None:
        """A connector's instance failed to connect: passed over for `interval` (logged
        when it starts, not at each retry that fails)."""
        with self._lock:
            server = self._servers.setdefault(label, _Server())
            first, server.down = server.down is None, reason
            if first:
                server.since = time.monotonic()
        if first:
            log.warning(
                "instance %s passed over: %s; retried after %.0f s", label, reason, interval
            )

    def back(self, label: str) -> None:
        """A connector's instance connected again after failing."""
        with self._lock:
            server = self._servers.get(label)
            if server is None or server.down is None:
                return
            server.down = None
            self._taken_back_at = time.monotonic()
        log.info("instance %s taken back: it connects again", label)

    # --- checkouts --------------------------------------------------------------------------

    def checkout(self, conn: Any, info: dict[str, Any]) -> tuple[str | None, bool]:
        """At the checkout of a pooled connection: (why to retire it instead, or None;
        whether a round trip was made on it). A standby's connection is checked when its
        server's check is due, and retired while the server lags; a fallback connection is
        retired once a standby served again since it opened, or FAILBACK_S after it opened."""
        label = info.get("server")
        if label is None:
            return None, False
        if info.get("fallback"):
            opened_at = info.get("opened_at", 0.0)
            if self._taken_back_at > opened_at or time.monotonic() - opened_at > FAILBACK_S:
                return "on a fallback server: a standby may serve again", False
            return None, False
        if not info.get("standby") or not self.max_lag:
            return None, False
        with self._lock:
            server = self._servers.setdefault(label, _Server(standby=True))
            due = self._due(server)
        if not due:
            return server.lagging, False
        return self._check_if_due(conn, label), True

    # --- /healthz ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            passed = {
                label: {
                    "reason": server.lagging or server.down,
                    "for_s": round(now - server.since, 1),
                }
                for label, server in self._servers.items()
                if server.lagging or server.down
            }
            lags = {
                label: round(server.lag, 3) if server.lag != float("inf") else None
                for label, server in self._servers.items()
                if server.standby and server.lag is not None
            }
        return {
            "max_lag_s": self.max_lag,
            "check_interval_s": self.interval or None,
            "standby_lag_s": lags,
            "passed_over": passed,
        }

    # --- the check --------------------------------------------------------------------------

    def _due(self, server: _Server) -> bool:
        """Under the lock: may a check of this server start now?"""
        if not self.max_lag or server.checking:
            return False
        return time.monotonic() - server.checked_at >= self.interval

    def _check_if_due(self, conn: Any, label: str) -> str | None:
        """Claim this server's check if it is due and run it on `conn`; the server's reason to
        be passed over, or None."""
        with self._lock:
            server = self._servers[label]
            if not self._due(server):
                return server.lagging
            server.checking = True
        try:
            [row] = driver.fetch(conn, CHECK_SQL)
        finally:
            with self._lock:
                server.checking = False
        return self._measured(label, time.monotonic(), *row)

    def _measured(
        self,
        label: str,
        now: float,
        received: str | None,
        replayed: str | None,
        pause: str | None,
        receiver: bool,
        status: str | None,
        replay_age: float | None,
    ) -> str | None:
        receive, replay = lsn(received), lsn(replayed)
        streaming = receiver and receive is not None and status in (None, "streaming")
        with self._lock:
            server = self._servers[label]
            server.checked_at = now
            while server.pending and replay is not None and server.pending[0][1] <= replay:
                server.visible_as_of = server.pending.popleft()[0]
            if streaming and replay is not None and replay >= receive:  # type: ignore[operator]
                server.visible_as_of = now
                server.pending.clear()
            elif streaming:
                server.pending.append((now, receive))  # type: ignore[arg-type]
            since = now - server.visible_as_of if server.visible_as_of is not None else None
            ages = [a for a in (since, replay_age) if a is not None]
            server.lag = lag = max(min(ages), 0.0) if ages else float("inf")
            was = server.lagging
            if lag > self.max_lag:  # type: ignore[operator]
                why = (
                    "replay paused"
                    if pause in ("paused", "pause requested")
                    else "WAL receiver not streaming"
                    if not streaming
                    else "replay behind"
                )
                bound = f"DB_MAX_REPLICA_LAG {self.max_lag:g} s"
                server.lagging = f"{why}: {_seconds(lag)} behind ({bound})"
                if was is None:
                    server.since = now
            else:
                server.lagging = None
                if was is not None:
                    self._taken_back_at = now
        if was is None and server.lagging is not None:
            log.warning("standby %s passed over: %s", label, server.lagging)
        elif was is not None and server.lagging is None:
            log.info("standby %s taken back: %s behind", label, _seconds(lag))
        return server.lagging


def _seconds(value: float) -> str:
    return "an unknown time" if value == float("inf") else f"{value:.1f} s"
