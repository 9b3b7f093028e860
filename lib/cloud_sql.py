"""Connections through the Cloud SQL Python Connector, bounded in time and in Admin API calls.

The connector (cloud-sql-python-connector 1.23) gets an ephemeral client certificate and the
instance's addresses from the Cloud SQL Admin API, opens a mutual-TLS tunnel to the
instance's server proxy (port 3307) and logs in through it. It leaves three things to us:

- Time. `Connector(timeout=...)` only becomes the driver's `timeout`, which pg8000 ignores
  for the socket the connector hands it, and the Admin API calls wait up to aiohttp's 300 s.
  Here each connect runs on an event loop of our own and its caller waits at most
  DB_CONNECT_TIMEOUT; an attempt given up is cancelled and whatever it opens is closed.
- Admin API quota. After a failed connect the connector refreshes its certificate on the
  next one (two API calls), and concurrent failing connects each refresh. Until a connect
  succeeds, one attempt runs at a time; after a failure, one per back-off interval (1 s
  doubling to 30 s, each up to a quarter longer at random), and meanwhile requests are
  answered from the last failure at once.
- Meaning. An Admin API refusal (403, 404), a wrong region or a missing IP type becomes a
  ConfigError naming the setting to fix; a driver error keeps its SQLSTATE. Either is the
  `__cause__` of the ConnectError raised to the pool.

This module imports the connector (~0.45 s, ~900 modules): lib/engine.py imports it only
when INSTANCE_CONNECTION_NAME is set, on the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Any

import aiohttp
import google.auth.exceptions
from google.cloud.sql.connector import Connector, IPTypes
from google.cloud.sql.connector.exceptions import AutoIAMAuthNotSupported, CloudSQLIPTypeError

from lib import driver
from lib.config import CloudSql
from lib.errors import ConfigError, ConnectError
from lib.iam import IamUser, login_refusal, runtime_user
from lib.instances import Instances

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


class CloudSqlConnect:
    """The pool's creator: one Connector per process, on an event-loop thread of our own."""

    def __init__(self, cs: CloudSql, driver_args: dict[str, Any], timeout: float) -> None:
        self._cs = cs
        self._driver_args = driver_args
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(_LoginExecutor(thread_name_prefix="cloud-sql-login"))
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cloud-sql-connector", daemon=True
        )
        self._thread.start()
        credentials = None
        self._iam: IamUser | None = IamUser(cs.user, cs.user) if cs.iam_auth and cs.user else None
        try:
            if cs.iam_auth and not cs.user:  # DB_IAM_AUTH alone: the runtime service account
                credentials, self._iam = runtime_user()
            self._connector = Connector(
                ip_type=IPTypes[cs.ip_type],
                enable_iam_auth=cs.iam_auth,
                # Certificates are refreshed when a connection needs one: a background
                # refresh fails while Cloud Run throttles the CPU between requests.
                refresh_strategy="lazy",
                loop=self._loop,
                sqladmin_api_endpoint=cs.api_endpoint,
                credentials=credentials,
            )
        except ConfigError:
            self._stop_loop()
            raise
        except google.auth.exceptions.DefaultCredentialsError as exc:
            self._stop_loop()
            raise ConfigError(
                "GOOGLE_APPLICATION_CREDENTIALS",
                "no Google credentials found: run as a service account (Cloud Run does) "
                "or point this at a service-account key file",
            ) from exc
        self._state = threading.Lock()  # guards the fields below
        self._healthy = False  # the last connect succeeded
        self._failure: BaseException | None = None  # why the last connect failed
        self._interval = 0.0
        self._retry_at = 0.0
        self._turn = threading.Lock()  # held by the one attempt allowed while not healthy
        self._instances = Instances(cs.instances, cs.target_session_attrs)

    def __call__(self) -> driver.Connection:
        """A new connection, or ConnectError within DB_CONNECT_TIMEOUT (`__cause__` says why)."""
        deadline = time.monotonic() + self._timeout
        if self._healthy:  # the common case: connects run side by side
            return self._attempt(deadline)
        with self._one_at_a_time(deadline):
            if not self._healthy:
                return self._attempt(deadline)
        # Another attempt succeeded while this one waited: connect in the time left. Running
        # out of it says nothing about Cloud SQL, so that is not remembered as a failure.
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
            return ConnectError("Cloud SQL: the first connection is still being opened")
        wait = max(self._retry_at - time.monotonic(), 0)
        return _connect_error(
            f"Cloud SQL: last connect failed; next attempt in {wait:.1f} s", failure
        )

    def close(self) -> None:
        """Close the Connector (its HTTP session) and stop the event loop's thread."""
        self._connector.close()
        self._stop_loop()

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
            raise _connect_error("Cloud SQL: connect failed", failure) from failure
        with self._state:
            self._healthy, self._failure, self._interval = True, None, 0.0
        return conn

    def _open_one(self, instance: str, deadline: float) -> Any:
        """A connection to `instance` by `deadline`, or the reason there is none."""
        handover: Future = Future()
        task = asyncio.run_coroutine_threadsafe(self._open(handover, instance), self._loop)
        try:
            return handover.result(timeout=max(deadline - time.monotonic(), 0))
        except TimeoutError:
            if not handover.cancel():  # it arrived as the time ran out
                return handover.result()
            task.cancel()  # stops the Admin API wait; _LoginExecutor closes a late login
            raise TimeoutError(
                f"no connection to {instance} in time (DB_CONNECT_TIMEOUT {self._timeout:g} s)"
            ) from None

    async def _open(self, handover: Future, instance: str) -> None:
        """Runs on our loop: connect, then hand the connection over, or close it if the
        caller has given up meanwhile."""
        cs = self._cs
        try:
            conn = await self._connector.connect_async(
                instance,
                driver.NAME,
                user=self._iam.user if self._iam else cs.user,
                password=cs.password,
                db=cs.database,
                **self._driver_args,
            )
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who classifies it
            with contextlib.suppress(InvalidStateError):
                handover.set_exception(_meaning(exc, instance, cs, self._iam))  # __context__ intact
            return
        try:
            handover.set_result(conn)
        except InvalidStateError:
            _close_quietly(conn)

    def _failed(self, failure: BaseException) -> None:
        with self._state:
            now = time.monotonic()
            if self._failure is None:
                self._interval = BACKOFF_FIRST_S
            elif now >= self._retry_at:  # a retry after the interval failed too
                self._interval = min(self._interval * 2, BACKOFF_MAX_S)
            # Up to a quarter later, at random: instances that failed together (a fleet after
            # an outage) come back apart, and never sooner than the interval.
            jitter = random.uniform(1, 1.25)  # noqa: S311 - not for security
            self._healthy, self._failure = False, failure
            self._retry_at = now + self._interval * jitter

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


class _LoginExecutor(ThreadPoolExecutor):
    """Our loop's default executor, where the connector runs pg8000's login. If the attempt is
    cancelled during the login (its caller gave up), asyncio drops the connection the login
    then returns (connector.py awaits it bare): close it here, rather than leave a server
    connection open until the garbage collector finds it."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        future = super().submit(fn, *args, **kwargs)
        task = asyncio.current_task()
        if task is not None:
            loop = task.get_loop()

            def settle(login: Future) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed at exit
                    loop.call_soon_threadsafe(_close_if_dropped, task, login)

            future.add_done_callback(settle)
        return future


def _close_if_dropped(task: asyncio.Task, login: Future) -> None:
    """On the loop, once a login is done: a task cancelled at that await never received it."""
    if not task.done():
        task.add_done_callback(lambda _: _close_if_dropped(task, login))
    elif task.cancelled() and not login.cancelled() and login.exception() is None:
        _close_quietly(login.result())


def _close_quietly(conn: Any) -> None:
    if driver.is_connection(conn):
        with contextlib.suppress(Exception):
            conn.close()


def _connect_error(message: str, failure: BaseException) -> ConnectError:
    """A ConnectError whose __cause__ is `failure`, for the classifier to read."""
    error = ConnectError(message)
    error.__cause__ = failure
    return error


def _meaning(exc: Exception, instance: str, cs: CloudSql, iam: IamUser | None) -> Exception:
    """The connector's errors in our terms: what a redeploy must fix is a ConfigError naming
    the setting (the connector's own exception stays its __cause__); the rest is unchanged."""
    if isinstance(exc, KeyError) and isinstance(exc.__context__, Exception):
        # Connector 1.23: when concurrent connects fail on the Admin API, each removes the
        # same cache entry and all but the first raise KeyError from the API's answer.
        exc = exc.__context__
    config = None
    if isinstance(exc, aiohttp.ClientResponseError) and exc.status in (403, 404):
        config = ConfigError(
            "INSTANCE_CONNECTION_NAME",
            f"the Cloud SQL Admin API answered {exc.status} for '{instance}': check the "
            "project, region and instance name, that the Cloud SQL Admin API is enabled, and "
            "that the function's service account has roles/cloudsql.client",
        )
    elif isinstance(exc, ValueError) and "region was mismatched" in str(exc):
        config = ConfigError("INSTANCE_CONNECTION_NAME", f"wrong region in '{instance}'")
    elif isinstance(exc, CloudSQLIPTypeError):
        config = ConfigError(
            "IP_TYPE", f"the instance has no {cs.ip_type.lower()} address; choose another type"
        )
    elif iam is not None and (refusal := login_refusal(exc, iam, instance)) is not None:
        config = refusal
    elif isinstance(exc, AutoIAMAuthNotSupported):
        config = ConfigError("DB_IAM_USER", "this instance does not support IAM database login")
    if config is None:
        return exc
    config.__cause__ = exc
    return config
