"""IAM database login: who the function logs in as, and what to fix when Cloud SQL says no.

With DB_IAM_AUTH=true and no DB_IAM_USER, the database user is the runtime service account:
its email from the credentials (a key file, impersonation), or, on Cloud Run, from the
metadata server, which google-auth asks when it refreshes the credentials. Cloud SQL names
an IAM user for a service account by its email without `.gserviceaccount.com`.

An IAM login can fail in four places, each with its own fix. The Admin API refusing (no
roles/cloudsql.client or roles/alloydb.client) is read in lib/connectors/cloud_sql.py and
lib/connectors/alloydb.py; a statement refused (no GRANT) in lib/postgres/diagnosis.py; the two
refusals at login are read here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import google.auth
import google.auth.exceptions
import google.auth.transport.requests

from lib.errors import ConfigError
from lib.postgres.diagnosis import server_error

log = logging.getLogger(__name__)

_SUFFIX = ".gserviceaccount.com"


@dataclass(frozen=True)
class Engine:
    """What an IAM login needs on one of Google's engines, for the fixes named."""

    name: str
    scope: str  # what the credentials must carry for its Admin API
    login_role: str  # what lets the account log in
    flag: str  # the database flag that turns IAM login on
    add_user: str  # the command adding the IAM user, with {user}, {name}, {cluster}, {region}


CLOUD_SQL = Engine(
    "Cloud SQL",
    "https://www.googleapis.com/auth/sqlservice.admin",
    "roles/cloudsql.instanceUser (permission cloudsql.instances.login)",
    "cloudsql.iam_authentication=on",
    "gcloud sql users create {user} --instance={name} --type=cloud_iam_service_account",
)
ALLOYDB = Engine(
    "AlloyDB",
    "https://www.googleapis.com/auth/cloud-platform",
    "roles/alloydb.databaseUser",
    "alloydb.iam_authentication=on",
    "gcloud alloydb users create {user} --cluster={cluster} --region={region} --type=IAM_BASED",
)


@dataclass(frozen=True)
class IamUser:
    """The database user of an IAM login, and the principal behind it."""

    user: str  # as Cloud SQL names it: the email without .gserviceaccount.com
    email: str  # the principal, for the gcloud commands in a fix


def runtime_user(engine: Engine = CLOUD_SQL) -> tuple[Any, IamUser]:
    """Google's default credentials and the database user of their service account.
    Raises ConfigError when there are none, or they are not a service account's."""
    try:
        credentials, _ = google.auth.default(scopes=[engine.scope])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ConfigError(
            "DB_IAM_AUTH",
            "no Google credentials found to take the database user from: run as a service "
            "account (Cloud Run does) or set GOOGLE_APPLICATION_CREDENTIALS",
        ) from exc
    email = getattr(credentials, "service_account_email", None)
    source = "the credentials"
    if email == "default":  # Compute Engine credentials: the metadata server knows the email
        try:
            credentials.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.RefreshError as exc:
            raise ConfigError(
                "DB_IAM_AUTH",
                "the metadata server did not name the service account: set DB_IAM_USER",
            ) from exc
        email, source = credentials.service_account_email, "the metadata server"
    if not email or "@" not in email:
        raise ConfigError(
            "DB_IAM_AUTH",
            f"the credentials ({type(credentials).__name__}) are not a service account's, so "
            "they name no database user: set DB_IAM_USER, or run as a service account",
        )
    iam = IamUser(email.removesuffix(_SUFFIX), email)
    log.info("IAM database login as %s (service account %s, from %s)", iam.user, email, source)
    return credentials, iam


def login_refusal(
    exc: BaseException, iam: IamUser, instance: str, engine: Engine = CLOUD_SQL
) -> ConfigError | None:
    """The fix for an IAM login that the database refused, or None if `exc` is not one."""
    error = server_error(exc)
    if error is None or not error.sqlstate.startswith("28"):
        return None
    message = error.message
    if "IAM" in message:
        return ConfigError(
            "DB_IAM_AUTH",
            f"{engine.name} refused the IAM login of {iam.user} on '{instance}' ({message}): "
            f"grant {iam.email} {engine.login_role} and check that the instance has "
            f"{engine.flag}",
        )
    if "does not exist" in message:
        parts = dict(zip(*[iter(instance.split("/"))] * 2, strict=False))  # AlloyDB's URI
        command = engine.add_user.format(
            user=iam.user,
            name=instance.rsplit(":", 1)[-1],
            cluster=parts.get("clusters", ""),
            region=parts.get("locations", ""),
        )
        return ConfigError(
            "DB_IAM_AUTH",
            f"{iam.user} is not a database user of '{instance}': add it with `{command}`",
        )
    return None
