"""One attempt at a time while connects fail, shared by the connector paths (Cloud SQL,
AlloyDB), so a failing database costs at most one Admin API refresh per back-off interval.

Both connectors refresh their certificate after a failed connect (two Admin API calls), and
concurrent failing connects each refresh. So until a connect succeeds, one attempt runs at a
time; after a failure, one per back-off interval (1 s doubling to 30 s, each up to a quarter
longer at random), and meanwhile requests are answered from the last failure at once. The
failure is the `__cause__` of the ConnectError raised to the pool.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any

from lib.connectors.instances import Instances
from lib.errors import ConnectError
from lib.postgres import driver
from lib.postgres.backoff import next_interval


class GatedConnect:
    """The pool's creator around `_open_one(instance, deadline)`, which a subclass provides:
    the instances chosen by `Instances`, the whole bounded by `timeout`."""

    label = "the database"  # for messages: "Cloud SQL", "AlloyDB"

    def __init__(self, instances: Instances, timeout: float) -> None:
        self._instances = instances
        self._timeout = timeout
        self._state = threading.Lock()  # guards the fields below
        self._healthy = False  # the last connect succeeded
        self._failure: BaseException | None = None  # why the last connect failed
        self._interval = 0.0
        self._retry_at = 0.0
        self._turn = threading.Lock()  # held by the one attempt allowed while not healthy

    def __call__(self) -> driver.Connection:
        """A new connection, or ConnectError within DB_CONNECT_TIMEOUT (`__cause__` says why)."""
        deadline = time.monotonic() + self._timeout
        if self._healthy:  # the common case: connects run side by side
            return self._attempt(deadline)
        with self._one_at_a_time(deadline):
            if not self._healthy:
                return self._attempt(deadline)
        # Another attempt succeeded while this one waited: connect in the time left. Running
        # out of it says nothing about the database, so that is not remembered as a failure.
        return self._attempt(deadline, remember_timeout=False)

    @property
    def healthy(self) -> bool:
        """Did the last connect succeed? If not, a request that found no free connection
        waited on connects that fail or hang, not on busy connections."""
        return self._healthy

    def refusal(self) -> ConnectError:
        """The answer while connects fail: the last failure, raised again without an attempt."""
        failure = self._failure
        if failure is None:
            return ConnectError(f"{self.label}: the first connection is still being opened")
        wait = max(self._retry_at - time.monotonic(), 0)
        return connect_error(
            f"{self.label}: last connect failed; next attempt in {wait:.1f} s", failure
        )

    def _open_one(self, instance: str, deadline: float) -> driver.Connection:
        raise NotImplementedError

    @contextlib.contextmanager
    def _one_at_a_time(self, deadline: float) -> Any:
        """The turn to attempt while connects are not known to work. Before the first result,
        wait for it (it may well succeed); after a failure, take the turn only when the
        back-off interval has passed and nobody else holds it; otherwise be refused."""
        if self._failure is not None and time.monotonic() < self._retry_at:
            raise self.refusal()
        wait = deadline - time.monotonic() if self._failure is None else 0
        if not self._turn.acquire(timeout=max(wait, 0)):
            raise self.refusal()
        try:
            if self._failure is not None and time.monotonic() < self._retry_at:
                raise self.refusal()  # the attempt this one waited for has just failed
            yield
        finally:
            self._turn.release()

    def _attempt(self, deadline: float, remember_timeout: bool = True) -> driver.Connection:
        try:
            conn = self._instances.connect(self._open_one, deadline)
        except Exception as failure:  # remembered, then raised as the cause
            if remember_timeout or not isinstance(failure, TimeoutError):
                self._failed(failure)
            raise connect_error(f"{self.label}: connect failed", failure) from failure
        with self._state:
            self._healthy, self._failure, self._interval = True, None, 0.0
        return conn

    def _failed(self, failure: BaseException) -> None:
        with self._state:
            now = time.monotonic()
            self._interval = next_interval(self._interval, self._retry_at, now)
            # Up to a quarter later, at random: instances that failed together (a fleet after
            # an outage) come back apart, and never sooner than the interval.
            jitter = random.uniform(1, 1.25)  # noqa: S311 - not for security
            self._healthy, self._failure = False, failure
            self._retry_at = now + self._interval * jitter


def connect_error(message: str, failure: BaseException) -> ConnectError:
    """A ConnectError whose __cause__ is `failure`, for the classifier to read."""
    error = ConnectError(message)
    error.__cause__ = failure
    return error
