"""The session settings every connection carries, and the proof that they hold.

Direct to PostgreSQL they travel in the startup packet: set once per connection, no round
trip, and never a `SET` that could outlive our use of a connection. A transaction pooler
(PgBouncer, Supavisor, Neon's pooler) refuses them (`08P01 unsupported startup parameter`) or
drops them silently, and hands one server connection to many clients; there the role has to
carry them (sql/readonly_role.sql). So the function recognises known poolers up front, falls
back once when a pooler refuses, and reads what the session really has once per process,
warning about every protection that is off.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from lib.config import Settings
from lib.errors import ConnectMisconfigured
from lib.postgres import driver
from lib.postgres.capacity import check_budget
from lib.postgres.diagnosis import server_error
from lib.postgres.replicas import Replicas

log = logging.getLogger(__name__)

_REFUSED = re.compile(r"unsupported startup parameter(?: in options)?: (\S+)")


class Session:
    """This process's session settings, transaction-pooler mode and verified protections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = settings.url
        # Settings from DATABASE_URL's `options` (its own settings were refused when parsing).
        self.url_params = dict(url.options) if url else {}
        self.pooler: str | None = None  # why we believe a transaction pooler is in front
        if url is not None and url.pooler:
            self.pooler = url.pooler
        elif settings.transaction_pooler:
            self.pooler = "DB_TRANSACTION_POOLER=true"
        self.verified: dict[str, str] | None = None  # the settings as the session has them
        self._lock = threading.Lock()
        # The servers read from: standbys' lag, those passed over (lib/postgres/replicas.py).
        self.replicas = Replicas(settings.max_replica_lag)

    def wanted(self) -> dict[str, str]:
        """The protections, as PostgreSQL reports them in pg_settings (ms, on/off)."""
        s = self.settings
        return {
            "statement_timeout": str(s.statement_timeout_ms),
            # A connection must never sit in an open transaction holding locks or the xmin horizon.
            "idle_in_transaction_session_timeout": str(max(s.statement_timeout_ms, 1000)),
            "default_transaction_read_only": "on",
        }

    def startup_params(self) -> dict[str, str]:
        """Sent with every new connection. Behind a pooler only what poolers track."""
        ours = {"TimeZone": "UTC"}
        if self.pooler is None:
            ours.update(self.wanted())
            if self.settings.idle_timeout:
                # The server-side safety net for instances frozen with connections open: a
                # session idle a little longer than DB_IDLE_TIMEOUT is closed (PostgreSQL 14+).
                ours["idle_session_timeout"] = str(int(self.settings.idle_timeout * 1000) + 2000)
        # The URL's own settings win (only TimeZone can collide: the rest is refused at startup).
        mine = {key.lower() for key in self.url_params}
        return {**{k: v for k, v in ours.items() if k.lower() not in mine}, **self.url_params}

    def refused(self, exc: BaseException) -> bool:
        """A connect failed: did a pooler refuse one of our settings? Then switch, once per
        process, to sending none (True: connect again). Refusing the URL's own `options` is
        a configuration error instead."""
        error = server_error(exc)
        match = _REFUSED.search(error.message) if error and error.sqlstate == "08P01" else None
        if match is None:
            return False
        name = match.group(1)
        if name.lower() in {key.lower() for key in self.url_params}:
            raise ConnectMisconfigured(
                f"the server (a pooler?) refused startup parameter {name} from DATABASE_URL's "
                "options: remove it, or list it in the pooler's ignore_startup_parameters"
            ) from exc
        if self.settings.transaction_pooler is False:
            return False  # told there is no pooler: let the refusal be seen
        with self._lock:
            switched, self.pooler = (
                self.pooler is None,
                self.pooler or f"the server refused startup parameter {name}",
            )
        if switched:
            log.warning(
                "a transaction pooler refused startup parameter %s: connecting without the "
                "function's session settings from now on (set them on the role: "
                "sql/readonly_role.sql)",
                name,
            )
        return name not in self.startup_params()  # another thread may have switched first

    def configure(self, conn: Any) -> None:
        """On each new connection; the first one of the process reads the session's settings
        as they really are, and (when no pooler is in front) checks the connection budget."""
        if self.verified is not None:
            return
        with self._lock:
            if self.verified is not None:
                return
            have = dict(
                driver.fetch(
                    conn,
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('statement_timeout', 'idle_in_transaction_session_timeout', "
                    "'default_transaction_read_only') UNION ALL SELECT 'role', current_user",
                )
            )
            self.verified = have
            sent = self.startup_params()
            dropped = [k for k, v in self.wanted().items() if k in sent and have.get(k) != v]
            if dropped and self.pooler is None:
                self.pooler = "the server dropped startup settings " + ", ".join(dropped)
                log.warning(
                    "startup settings were dropped on the way (%s): a pooler is in front "
                    "(ignore_startup_parameters?); treating it as a transaction pooler",
                    ", ".join(dropped),
                )
            self._warn_unprotected(have)
            if self.pooler is None:
                try:
                    check_budget(conn, self.settings)
                except Exception as exc:  # noqa: BLE001 - advice only, never fatal
                    log.info("connection budget not checked: %s", type(exc).__name__)

    def _warn_unprotected(self, have: dict[str, str]) -> None:
        wanted = self.wanted()
        off = [name for name in wanted if have.get(name) in ("0", "off")]
        if not off:
            return
        role = have.get("role", "<role>")
        fixes = " ".join(
            f'ALTER ROLE "{role}" SET {name} = '
            + ("on" if wanted[name] == "on" else f"'{wanted[name]}ms'")
            + ";"
            for name in off
        )
        log.warning(
            "unprotected sessions: %s off (%s); fix: %s",
            ", ".join(off),
            self.pooler or "as the server set them",
            fixes,
            extra={"json_fields": {"unprotected": off, "fix": fixes}},
        )

    def health(self) -> dict[str, Any]:
        """For /healthz: the mode and what the first connection found (None: no connection yet)."""
        protections = None
        if self.verified is not None:
            protections = {k: self.verified.get(k) for k in self.wanted()}
        return {
            "transaction_pooler": self.pooler,
            "session": protections,
            "replicas": self.replicas.health(),
        }
