"""The function's own exceptions: what every other module raises and reads.

The driver's exceptions stop at lib/postgres/driver.py, which translates them into these; the
rest of lib/ never sees pg8000's. `diagnosis.classify` says what each means, and
lib/http/statuses.py which status that gets.

    BadRequest           the request is invalid (says which part and why): a 400
    ConfigError          a setting is missing or invalid (names the variable): a 500
    ConnectError         opening a connection failed; its __cause__ says why
      ConnectMisconfigured   ... and retrying cannot help until the configuration is fixed
      ConnectMayPass         ... and it may pass (another host may serve): never a 500
    DatabaseError        the driver failed (translated by lib/postgres/driver.py)
      ServerError          ... the server answered with an error (SQLSTATE and message)
      Disconnected         ... the driver lost its connection, or was handed a closed one
    ConnectionLost       a pooled connection died under a statement and was discarded
    PoolBusy             every connection in use and DB_MAX_WAITING requests waiting
    Cancelled            the request stopped its own work: the client left, or its deadline
"""

from __future__ import annotations

ECHO_MOST = 40  # characters of client or configuration input an error message may quote


def excerpt(text: str, most: int = ECHO_MOST) -> str:
    """Input echoed in an error message, bounded: it can be sent or pasted in any length."""
    return text if len(text) <= most else text[:most] + "..."


def bounded(text: str) -> str:
    """A quoted excerpt of input for an error message."""
    return repr(excerpt(text))


class BadRequest(ValueError):
    """The request is invalid; the message says which part and why."""


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class ConnectError(Exception):
    """Opening a connection failed; the classifier reads the __cause__ to say how."""


class ConnectMisconfigured(ConnectError):
    """Opening a connection failed for a reason only a fix can cure; the message says what."""


class ConnectMayPass(ConnectError):
    """Opening a connection failed for a reason that may pass (a host that is a standby when a
    primary is wanted, say): the cause's SQLSTATE is not consulted, so one of several hosts
    refusing a login does not make the others' outage a misconfiguration."""


class DatabaseError(Exception):
    """The driver failed in a way it does not say more about."""


class ServerError(DatabaseError):
    """An error the server sent: `fields` are its error fields by code (C: SQLSTATE,
    M: message, S: severity; https://www.postgresql.org/docs/current/protocol-error-fields.html)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('C')}: {fields.get('M')}")
        self.fields = fields

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


class Disconnected(DatabaseError):
    """The driver's connection is unusable: its socket failed, or it was already closed."""


class ConnectionLost(Exception):
    """A pooled connection died under a statement; it has been discarded."""


class PoolBusy(Exception):
    """Every connection is in use and DB_MAX_WAITING requests already wait for one."""


class Cancelled(Exception):
    """The request stopped its own work: `reason` is "client_left", "deadline" (past
    REQUEST_TIMEOUT) or "client_idle" (lib/postgres/watch.py)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
