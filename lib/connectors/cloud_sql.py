"""Connections through the Cloud SQL Python Connector, bounded in time and in Admin API calls.

The connector (cloud-sql-python-connector 1.23) gets an ephemeral client certificate and the
instance's addresses from the Cloud SQL Admin API, opens a mutual-TLS tunnel to the
instance's server proxy (port 3307) and logs in through it. It leaves three things to us:

- Time. `Connector(timeout=...)` only becomes the driver's `timeout`, which pg8000 ignores
  for the socket the connector hands it, and the Admin API calls wait up to aiohttp's 300 s.
  Here each connect runs on an event loop of our own and its caller waits at most
  DB_CONNECT_TIMEOUT; an attempt given up is cancelled and whatever it opens is closed.
- Admin API quota. After a failed connect the connector refreshes its certificate on the
  next one (two API calls), and concurrent failing connects each refresh: lib/connectors/gate.py
  lets one attempt through per back-off interval while connects fail.
- Meaning. An Admin API refusal (403, 404), a wrong region or a missing IP type becomes a
  ConfigError naming the setting to fix; a driver error keeps its SQLSTATE. Either is the
  `__cause__` of the ConnectError raised to the pool.

This module imports the connector (~0.45 s, ~900 modules): lib/postgres/database.py imports it only
when INSTANCE_CONNECTION_NAME is set, on the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Any

import aiohttp
import google.auth.exceptions
from google.cloud.sql.connector import Connector, IPTypes
from google.cloud.sql.connector.exceptions import AutoIAMAuthNotSupported, CloudSQLIPTypeError

from lib.config import CloudSql
from lib.connectors.gate import GatedConnect
from lib.connectors.iam import IamUser, login_refusal, runtime_user
from lib.connectors.instances import Instances
from lib.errors import ConfigError
from lib.postgres import driver
from lib.postgres.replicas import Replicas


class CloudSqlConnect(GatedConnect):
    """The pool's creator: one Connector per process, on an event-loop thread of our own."""

    label = "Cloud SQL"

    def __init__(
        self, cs: CloudSql, driver_args: dict[str, Any], timeout: float, replicas: Replicas
    ) -> None:
        self._cs = cs
        self._driver_args = driver_args
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
        super().__init__(Instances(cs.instances, cs.target_session_attrs, replicas), timeout)

    def close(self) -> None:
        """Close the Connector (its HTTP session) and stop the event loop's thread."""
        self._connector.close()
        self._stop_loop()

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
            driver.close_quietly(conn)

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
        driver.close_quietly(login.result())


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
