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
from lib.postgres.replicas import Replicas, is_standby

Connect = Callable[[str, float], Any]  # (instance, deadline) -> an open DB-API connection


@dataclass
class _Health:
    standby: bool | None = None  # as found by the last connection to it; None = not yet known
    failed_at: float = 0.0
    retry_at: float = 0.0  # passed over until then, unless no other instance answers
    interval: float = 0.0
    claimed: bool = False  # one connect holds its retry; the others pass it over meanwhile


class Instances:
    """The instances of one INSTANCE_CONNECTION_NAME and what this process learned of them."""

    def __init__(
        self, names: tuple[str, ...], target_session_attrs: str, replicas: Replicas | None = None
    ) -> None:
        self.names = names
        self.attrs = target_session_attrs
        self.replicas = replicas or Replicas(None)
        self._lock = threading.Lock()
        self._health = {name: _Health() for name in names}

    def connect(self, connect: Connect, deadline: float) -> Any:
        """A connection to the first instance in `order()` that opens and matches; otherwise
        the failures, raised as one (its `__cause__` is what decides the status)."""
        failures: list[tuple[str, BaseException]] = []
        lagging: list[str] = []
        failed: set[str] = set()
        order, resting, claimed = self.order()
        passes = self._passes()
        try:
            for wanted in passes:
                for i, name in enumerate(order):
                    if name in failed:
                        continue
                    if name in resting and (wanted != passes[-1] or self._claimed(name)):
                        continue  # only the last pass comes to it, unless another holds its retry
                    if wanted != passes[-1] and self._role(name) is False:
                        continue  # a known primary: only the last pass comes to it
                    if self.replicas.passed_over(name) is not None:
                        continue  # lagging, and not yet due for another check
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
                        fallback = len(passes) > 1 and wanted == passes[-1]
                        lags = self.replicas.admit(conn, name, fallback)
                        if lags is None:
                            self._served(name)
                            return conn
                        lagging.append(f"{name}: {lags}")
                        failed.add(name)
                    driver.close_quietly(conn)
        finally:
            self._release(claimed)
        raise self._no_instance(failures, wanted=passes[-1], lagging=lagging)

    def _passes(self) -> list[str]:
        """prefer-standby is libpq's two passes: standbys, then any. One instance: no choice."""
        if self.attrs == "prefer-standby":
            return ["any"] if len(self.names) == 1 else ["standby", "any"]
        return [self.attrs]

    def order(self) -> tuple[list[str], set[str], set[str]]:
        """The order to try: first an instance whose back-off interval just ended, its retry
        claimed by this connect alone (`claimed`: the others pass it over until the retry's
        outcome is known, so concurrent connects make one attempt, not one each); then the
        rest at random, those known to be of the unwanted role after the others; last, those
        resting in their back-off interval or whose retry another connect holds (`resting`),
        in the order they failed."""
        names = list(self.names)
        random.shuffle(names)
        now = time.monotonic()
        wants_standby = self.attrs != "primary"
        with self._lock:
            claimed = set()
            for name in names:
                health = self._health[name]
                if health.interval and health.retry_at <= now and not health.claimed:
                    health.claimed = True
                    claimed.add(name)
            resting = {
                n for n in names if self._health[n].retry_at > now or self._health[n].claimed
            } - claimed

            def rank(name: str) -> tuple[bool, bool, float, bool]:
                health = self._health[name]
                unwanted = self.attrs != "any" and health.standby not in (None, wants_standby)
                return (
                    name not in claimed,
                    name in resting,
                    health.failed_at if name in resting else 0.0,
                    unwanted,
                )

            names.sort(key=rank)  # stable: random within each rank
        return names, resting, claimed

    def _claimed(self, name: str) -> bool:
        with self._lock:
            return self._health[name].claimed

    def _release(self, claimed: set[str]) -> None:
        with self._lock:
            for name in claimed:
                self._health[name].claimed = False

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
            was_resting = bool(health.interval)
            health.interval, health.retry_at = 0.0, 0.0
        if was_resting:
            self.replicas.back(name)

    def _failed(self, name: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            health = self._health[name]
            health.interval = next_interval(health.interval, health.retry_at, now)
            health.failed_at, health.retry_at = now, now + health.interval
        if len(self.names) > 1:
            self.replicas.down(name, describe(exc), health.interval)

    def _no_instance(
        self, failures: list[tuple[str, BaseException]], wanted: str, lagging: list[str]
    ) -> Exception:
        """One failure as it is; several as one naming each instance, misconfigured only if
        every one is; none (all reached, none of the wanted role, or lagging) as an outage."""
        if not failures:
            return ConnectMayPass(
                f"no instance of INSTANCE_CONNECTION_NAME is a {wanted} now "
                f"(DB_TARGET_SESSION_ATTRS={self.attrs})"
                + (f"; passed over: {'; '.join(lagging)}" if lagging else "")
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
