"""Which instance a new connection goes to, when INSTANCE_CONNECTION_NAME names a primary and
its read replicas.

The choice is libpq's for a multi-host URL with load_balance_hosts=random: the instances in
random order, kept or passed over by target_session_attrs (prefer-standby by default: this
function only reads), falling through to the next one when one cannot be reached. Two things
libpq does not do, because it forgets everything between connections and this pool does not:

- An instance that failed is passed over for a back-off interval (1 s doubling to 30 s) while
  another answers, so a replica that is down or being recreated costs one bounded connect
  attempt, not one per new connection, and no request sees it fail.
- Each instance's role (standby or not), learned when a connection to it opened, orders the
  next choice: a known primary is not dialled just to be closed again in the standby pass.

Each attempt is bounded by an equal share of the time left, so one slow instance cannot spend
the whole DB_CONNECT_TIMEOUT of a request that another could serve.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib.errors import ConnectMayPass, ConnectMisconfigured
from lib.postgres import driver
from lib.postgres.backoff import next_interval
from lib.postgres.diagnosis import describe, misconfiguration

log = logging.getLogger(__name__)

Connect = Callable[[str, float], Any]  # (instance, deadline) -> an open DB-API connection


@dataclass
class _Health:
    standby: bool | None = None  # as found by the last connection to it; None = not yet known
    failed_at: float = 0.0
    retry_at: float = 0.0  # passed over until then, unless no other instance answers
    interval: float = 0.0


class Instances:
    """The instances of one INSTANCE_CONNECTION_NAME and what this process learned of them."""

    def __init__(self, names: tuple[str, ...], target_session_attrs: str) -> None:
        self.names = names
        self.attrs = target_session_attrs
        self._lock = threading.Lock()
        self._health = {name: _Health() for name in names}

    def connect(self, connect: Connect, deadline: float) -> Any:
        """A connection to the first instance in `order()` that opens and matches; otherwise
        the failures, raised as one (its `__cause__` is what decides the status)."""
        failures: list[tuple[str, BaseException]] = []
        failed: set[str] = set()
        order, resting = self.order()
        passes = self._passes()
        for wanted in passes:
            for i, name in enumerate(order):
                if name in failed:
                    continue
                if wanted != passes[-1] and (name in resting or self._role(name) is False):
                    continue  # resting, or a known primary: only the last pass comes to it
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                share = 1 + len([n for n in order[i + 1 :] if n not in failed])
                try:
                    conn = connect(name, time.monotonic() + left / share)
                except Exception as exc:  # noqa: BLE001 - the next instance may answer
                    self._failed(name, exc)
                    failed.add(name)
                    failures.append((name, exc))
                    continue
                if self._matches(name, conn, wanted):
                    self._served(name)
                    return conn
                driver.close_quietly(conn)
        raise self._no_instance(failures, wanted=passes[-1])

    def _passes(self) -> list[str]:
        """prefer-standby is libpq's two passes: standbys, then any. One instance: no choice."""
        if self.attrs == "prefer-standby":
            return ["any"] if len(self.names) == 1 else ["standby", "any"]
        return [self.attrs]

    def order(self) -> tuple[list[str], set[str]]:
        """Random order; then those known to be of the unwanted role; last, those resting in
        their back-off interval (in the order they failed). And which are resting."""
        names = list(self.names)
        random.shuffle(names)
        now = time.monotonic()
        wants_standby = self.attrs != "primary"

        def rank(name: str) -> tuple[bool, float, bool]:
            health = self._health[name]
            resting = health.retry_at > now
            unwanted = self.attrs != "any" and health.standby not in (None, wants_standby)
            return resting, health.failed_at if resting else 0.0, unwanted

        with self._lock:
            names.sort(key=rank)  # stable: random within each rank
            resting = {n for n in names if self._health[n].retry_at > now}
        return names, resting

    def _role(self, name: str) -> bool | None:
        return self._health[name].standby

    def _matches(self, name: str, conn: Any, wanted: str) -> bool:
        if wanted == "any":
            return True
        standby = is_standby(conn)
        with self._lock:
            self._health[name].standby = standby
        return standby == (wanted == "standby")

    def _served(self, name: str) -> None:
        with self._lock:
            health = self._health[name]
            if health.interval:
                log.info("instance %s serves again", name)
            health.interval, health.retry_at = 0.0, 0.0

    def _failed(self, name: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            health = self._health[name]
            health.interval = next_interval(health.interval, health.retry_at, now)
            health.failed_at, health.retry_at = now, now + health.interval
        if len(self.names) > 1:
            log.warning(
                "instance %s failed to connect (%s); passed over for %.0f s",
                name,
                describe(exc),
                health.interval,
            )

    def _no_instance(self, failures: list[tuple[str, BaseException]], wanted: str) -> Exception:
        """One failure as it is; several as one naming each instance, misconfigured only if
        every one is; none (all reached, none of the wanted role) as an outage."""
        if not failures:
            return ConnectMayPass(
                f"no instance of INSTANCE_CONNECTION_NAME is a {wanted} now "
                f"(DB_TARGET_SESSION_ATTRS={self.attrs})"
            )
        if len(failures) == 1:
            return failures[0][1]  # type: ignore[return-value]
        fixes = [exc for _, exc in failures if misconfiguration(exc) is not None]
        misconfigured = len(fixes) == len(failures)
        kind = ConnectMisconfigured if misconfigured else ConnectMayPass
        error = kind(
            "no instance could serve: "
            + "; ".join(f"{name}: {describe(exc)}" for name, exc in failures)
        )
        error.__cause__ = fixes[0] if misconfigured else failures[-1][1]
        return error


def is_standby(conn: Any) -> bool:
    """Is this connection's server a hot standby? PostgreSQL 14+ reports in_hot_standby at
    login (no round trip); older servers are asked."""
    reported = driver.parameter(conn, "in_hot_standby")
    if reported is not None:
        return reported == "on"
    return bool(driver.fetch(conn, "SELECT pg_is_in_recovery()")[0][0])
