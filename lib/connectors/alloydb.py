"""Connections through the AlloyDB Python Connector, bounded in time and in Admin API calls.

The connector (google-cloud-alloydb-connector 1.14) gets a client certificate and the
instance's addresses from the AlloyDB Admin API (gRPC), opens a mutual-TLS tunnel to the
instance's server proxy (port 5433), sends the metadata exchange (an OAuth2 token; for IAM
login, AUTO_IAM) and hands the socket to pg8000. Like lib/connectors/cloud_sql.py, this module adds:

- Time. The connector's own waits are long (gRPC 60 s, the exchange 30 s) and its `connect`
  cannot be cancelled: each attempt runs on a thread of ours and its caller waits at most its
  share of DB_CONNECT_TIMEOUT; a connection that arrives after the caller gave up is closed.
- Admin API quota and instances: lib/connectors/gate.py (one attempt per back-off interval while
  connects fail) and lib/connectors/instances.py (the primary and read pools, prefer-standby).
- Meaning. An Admin API refusal (PERMISSION_DENIED, NOT_FOUND) or a missing IP type becomes a
  ConfigError naming the setting; IAM refusals name their fix (lib/connectors/iam.py).

This module imports the connector and grpcio: lib/postgres/database.py imports it only when
ALLOYDB_INSTANCE_URI is set, on the first request.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import google.auth.exceptions
from google.api_core import exceptions as api_exceptions
from google.cloud.alloydbconnector import Connector, IPTypes
from google.cloud.alloydbconnector.exceptions import IPTypeNotFoundError

from lib.config import AlloyDb
from lib.connectors.gate import GatedConnect
from lib.connectors.iam import ALLOYDB, IamUser, login_refusal, runtime_user
from lib.connectors.instances import Instances
from lib.errors import ConfigError
from lib.postgres import driver
from lib.postgres.replicas import Replicas


class AlloyDbConnect(GatedConnect):
    """The pool's creator: one AlloyDB Connector per process (it runs its own event loop)."""

    label = "AlloyDB"

    def __init__(
        self, ad: AlloyDb, driver_args: dict[str, Any], timeout: float, replicas: Replicas
    ) -> None:
        self._ad = ad
        self._driver_args = driver_args
        credentials = None
        self._iam: IamUser | None = IamUser(ad.user, ad.user) if ad.iam_auth and ad.user else None
        if ad.iam_auth and not ad.user:  # DB_IAM_AUTH alone: the runtime service account
            credentials, self._iam = runtime_user(ALLOYDB)
        endpoint = {"alloydb_api_endpoint": ad.api_endpoint} if ad.api_endpoint else {}
        try:
            self._connector = Connector(
                credentials=credentials,
                enable_iam_auth=ad.iam_auth,
                ip_type=IPTypes[ad.ip_type],
                # Certificates are refreshed when a connection needs one: a background
                # refresh fails while Cloud Run throttles the CPU between requests.
                refresh_strategy="lazy",
                **endpoint,
            )
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise ConfigError(
                "GOOGLE_APPLICATION_CREDENTIALS",
                "no Google credentials found: run as a service account (Cloud Run does) "
                "or point this at a service-account key file",
            ) from exc
        # Connects in flight, including those given up on (the connector cannot cancel).
        self._threads = ThreadPoolExecutor(thread_name_prefix="alloydb-connect")
        super().__init__(Instances(ad.instances, ad.target_session_attrs, replicas), timeout)

    def close(self) -> None:
        """Close the Connector (its event loop and gRPC channel)."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._connector.close()

    def _open_one(self, instance: str, deadline: float) -> driver.Connection:
        """A connection to `instance` by `deadline`, or the reason there is none."""
        ad = self._ad
        attempt = self._threads.submit(
            self._connector.connect,
            instance,
            driver.NAME,
            user=self._iam.user if self._iam else ad.user,
            password=ad.password,
            db=ad.database,
            **self._driver_args,
        )
        try:
            return attempt.result(timeout=max(deadline - time.monotonic(), 0))
        except TimeoutError:
            attempt.add_done_callback(_close_late)
            raise TimeoutError(
                f"no connection to {instance} in time (DB_CONNECT_TIMEOUT {self._timeout:g} s)"
            ) from None
        except Exception as exc:
            meaning = _meaning(exc, instance, ad, self._iam)
            if meaning is exc:
                raise
            raise meaning from exc


def _close_late(attempt: Future) -> None:
    """A connection that arrived after its caller gave up: nobody will use it."""
    if not attempt.cancelled() and attempt.exception() is None:
        driver.close_quietly(attempt.result())


def _meaning(exc: Exception, instance: str, ad: AlloyDb, iam: IamUser | None) -> Exception:
    """The connector's errors in our terms: what a redeploy must fix is a ConfigError naming
    the setting (the connector's own exception stays its __cause__); the rest is unchanged."""
    if isinstance(exc, api_exceptions.PermissionDenied | api_exceptions.NotFound):
        return ConfigError(
            "ALLOYDB_INSTANCE_URI",
            f"the AlloyDB Admin API answered {exc.code.name if exc.code else exc} for "
            f"'{instance}': check the project, region, cluster and instance, that the AlloyDB "
            "API is enabled, and that the function's service account has roles/alloydb.client "
            "and roles/serviceusage.serviceUsageConsumer",
        )
    if isinstance(exc, IPTypeNotFoundError):
        return ConfigError(
            "IP_TYPE", f"the instance has no {ad.ip_type.lower()} address; choose another type"
        )
    if isinstance(exc, ValueError) and "Metadata Exchange request has failed" in str(exc):
        return ConfigError(
            "DB_IAM_AUTH" if iam else "ALLOYDB_INSTANCE_URI",
            f"the instance's proxy refused the connection ({exc}): the function's service "
            "account needs roles/alloydb.client"
            + (" and, for IAM login, roles/alloydb.databaseUser" if iam else ""),
        )
    if iam is not None:
        refusal = login_refusal(exc, iam, instance, ALLOYDB)
        if refusal is not None:
            return refusal
    return exc
