"""One connect attempt in flight while connects are not known to work, shared by all the
requests of a process, on every connection path (lib/postgres/database.py keeps one for
DATABASE_URL; lib/connectors/gate.py one for each connector).

On Cloud Run every request that waits is a concurrency slot held. So until a connect
succeeds, a request that needs a new connection does not dial: one attempt runs, and the
others wait for its outcome, each within its own DB_CONNECT_TIMEOUT. What the last failure
says decides what a request does meanwhile (lib/postgres/diagnosis.py's `may_pass`):

- waking (57P03, a pooler or Neon waking its database, or a server that accepted the
  connection and did not finish the login in time): wait, for the attempt in flight or the
  next one (lib/postgres/backoff.py). When one succeeds everyone waiting is served;
- down (refused, no route, a DNS failure, a timeout before the server answered, a reset) or
  misconfigured: answered at once from that failure (a 503 with Retry-After, or the 500 that
  names the fix), without waiting, until the back-off interval allows the next attempt. A
  request arriving while that attempt runs is answered at once too, unless the server has
  accepted its connection (it may be waking: that one is waited for).

The first success ends the outage for everyone: connects run side by side again (as many as
the pool needs). Connects that were already running side by side when the failure came
finish on their own, so at that moment up to the pool's size of attempts can overlap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from lib.errors import ConnectError
from lib.postgres import backoff, connect_time
from lib.postgres.diagnosis import may_pass, timed_out

LAST_TRY_S = 0.1  # no attempt starts with less of a request's budget left than this

# One attempt: (deadline, accepted) -> an open DB-API connection. It calls `accepted()`
# once the server has accepted the connection (before the login), if it can tell.
Attempt = Callable[[float, Callable[[], None]], Any]


class Refusal(ConnectError):
    """Answered from the last failure (the `__cause__`), without an attempt of its own."""


class Gate:
    """The state of this process's connects to one database: healthy, waking or down."""

    def __init__(self, label: str, longest: float = backoff.MAX_S, quick_wake: bool = True):
        """`longest`: the down interval's bound. `quick_wake`: a waking database is tried
        again on the short wake schedule; otherwise after the interval (each attempt of a
        connector costs Admin API calls)."""
        self.label = label  # for messages: "the database", "Cloud SQL", "AlloyDB"
        self._longest = longest
        self._quick_wake = quick_wake
        self._cond = threading.Condition()  # guards the fields below; notified at each outcome
        self._healthy = False  # the last connect succeeded
        self._failure: BaseException | None = None  # why the last connect failed
        self._waking = False  # ... and it says the database is on its way
        self._interval = 0.0
        self._wakes = 0  # waking failures in a row
        self._retry_at = 0.0  # no attempt before this, after a failure
        self._running = False  # the one attempt is in flight
        self._accepted = False  # ... and the server has accepted its connection

    @property
    def healthy(self) -> bool:
        """Did the last connect succeed? If not, a request that found no free connection
        waited on connects that fail or hang, not on busy connections."""
        return self._healthy

    def refusing(self) -> bool:
        """Would a request that needs a new connection be answered now, without waiting?"""
        with self._cond:
            return self._refusing(time.monotonic())

    def refusal(self) -> Refusal:
        """The answer while connects fail: the last failure, raised again without an attempt."""
        with self._cond:
            return self._refusal(time.monotonic())

    def state(self) -> dict[str, Any]:
        """For /healthz: "ok", "waking", "down" or "unknown" (no outcome yet), and when the
        next attempt may start."""
        with self._cond:
            if self._healthy:
                return {"connects": "ok"}
            if self._failure is None:
                return {"connects": "unknown"}
            left = max(self._retry_at - time.monotonic(), 0.0)
            return {
                "connects": "waking" if self._waking else "down",
                "next_attempt_in_s": round(left, 2),
            }

    def connect(self, attempt: Attempt, timeout: float) -> Any:
        """A connection from `attempt`, or a ConnectError within `timeout` (DB_CONNECT_TIMEOUT)
        whose `__cause__` says why. Alone while connects are not known to work."""
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            alone, waited_now = self._turn(deadline)
            waited = waited or waited_now
            accepted: list[bool] = []

            def on_accepted(alone: bool = alone, accepted: list[bool] = accepted) -> None:
                accepted.append(True)
                if alone:
                    with self._cond:
                        self._accepted = True

            started = time.monotonic()
            try:
                conn = attempt(max(deadline, started + LAST_TRY_S), on_accepted)
            except Exception as failure:
                connect_time.add(connect_s=time.monotonic() - started)
                # Another attempt succeeded while this one waited, and this one ran out of
                # the time left: that says nothing about the database.
                remember = alone or not waited or not timed_out(failure)
                waking = self._failed(failure, alone, remember, bool(accepted))
                if remember and waking and deadline - time.monotonic() >= LAST_TRY_S:
                    continue  # wait for the next attempt (perhaps this request's)
                raise connect_error(f"{self.label}: connect failed", failure) from failure
            connect_time.add(connect_s=time.monotonic() - started)
            self._served(alone)
            return conn

    def _turn(self, deadline: float) -> tuple[bool, bool]:
        """Wait until this request may attempt: (alone, waited). Alone: it is the one attempt
        while connects fail; not alone: connects work, side by side. Refusal when it is to be
        answered from the last failure, or its budget ran out waiting."""
        waited = False
        with self._cond:
            while True:
                if self._healthy:
                    return False, waited
                now = time.monotonic()
                if self._refusing(now):
                    raise self._refusal(now)
                if self._running:
                    until = deadline  # its outcome, whatever it is, wakes this one
                elif now < self._retry_at:  # waking: the next attempt is due then
                    if self._retry_at > deadline - LAST_TRY_S:
                        raise self._refusal(now)  # not within this request's budget
                    until = self._retry_at
                elif self._failure is not None and deadline - now < LAST_TRY_S:
                    raise self._refusal(now)
                else:
                    self._running, self._accepted = True, False
                    return True, waited
                if now >= deadline:
                    raise self._refusal(now)
                waited = True
                self._cond.wait(until - now)
                connect_time.add(wait_s=time.monotonic() - now)

    def _refusing(self, now: float) -> bool:
        if self._healthy or self._failure is None or self._waking:
            return False
        if self._running:
            return not self._accepted
        return now < self._retry_at

    def _refusal(self, now: float) -> Refusal:
        failure = self._failure
        if failure is None:
            return Refusal(f"{self.label}: the first connect did not end within the budget")
        if self._running:
            refusal = Refusal(f"{self.label}: last connect failed; the next one is under way")
        else:
            wait = max(self._retry_at - now, 0)
            refusal = Refusal(f"{self.label}: last connect failed; next attempt in {wait:.1f} s")
        refusal.__cause__ = failure
        return refusal

    def _failed(self, failure: Exception, alone: bool, remember: bool, accepted: bool) -> bool:
        """Note a failed attempt; is the database waking (worth waiting for)?"""
        # A login the server accepted but did not finish in time: it is slow, not absent.
        waking = may_pass(failure) or (accepted and timed_out(failure))
        with self._cond:
            if alone:
                self._running = False
            if remember:
                now = time.monotonic()
                if waking and self._quick_wake:
                    wait = backoff.wake_wait(self._wakes)
                    self._wakes += 1
                else:
                    self._interval = backoff.next_interval(
                        self._interval, self._retry_at, now, self._longest
                    )
                    wait = backoff.jittered(self._interval)
                    self._wakes = self._wakes if waking else 0
                self._healthy, self._failure, self._waking = False, failure, waking
                self._retry_at = now + wait
            self._cond.notify_all()
        return waking

    def _served(self, alone: bool) -> None:
        with self._cond:
            if alone:
                self._running = False
            self._healthy, self._failure, self._waking = True, None, False
            self._interval, self._wakes, self._retry_at = 0.0, 0, 0.0
            self._cond.notify_all()


def connect_error(message: str, failure: BaseException) -> ConnectError:
    """A ConnectError whose __cause__ is `failure`, for the classifier to read."""
    error = ConnectError(message)
    error.__cause__ = failure
    return error
