"""The engine and its bounded pool: built lazily, once per process, never across a fork.

functions-framework imports `main.py` in the gunicorn master and serves requests in a
forked worker. A socket or thread made at import would be shared with (or dead in) the
worker, so nothing here connects, or starts the Cloud SQL Connector's thread, until the
first request asks for the engine.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import DisconnectionError, InterfaceError
from sqlalchemy.pool import ConnectionPoolEntry

from lib.config import APPLICATION_NAME, CloudSql, Settings

log = logging.getLogger(__name__)

# A connection unused for this long may have been cut while the instance was idle or
# frozen (NAT, proxies, failover): check it with one round trip before handing it out.
# A connection in steady use is never checked, so the hot path stays one round trip.
PING_AFTER_IDLE_S = 5.0


class ConnectError(Exception):
    """The Cloud SQL Connector could not open a connection (API, network or credentials)."""


class Database:
    """Owns this process's SQLAlchemy engine (and Cloud SQL Connector, if used)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._connector: Any = None  # google.cloud.sql.connector.Connector, imported lazily
        os.register_at_fork(after_in_child=self._forget_parent)
        atexit.register(self.close)

    def engine(self) -> Engine:
        """The engine, built on first call; safe to call from many threads at once."""
        engine = self._engine
        if engine is not None:
            return engine
        with self._lock:
            if self._engine is None:
                self._engine = self._build()
            return self._engine

    def close(self) -> None:
        """Close every pooled connection and the Connector (at shutdown)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            if self._connector is not None:
                self._connector.close()
                self._connector = None

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's pool without touching its sockets."""
        self._lock = threading.Lock()  # the parent's lock may have been held by a thread
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine = None
        self._connector = None  # its event-loop thread did not survive the fork

    def _build(self) -> Engine:
        s = self.settings
        driver_args: dict[str, Any] = {
            "application_name": APPLICATION_NAME,
            "startup_params": s.startup_params(),
            "timeout": s.connect_timeout,
        }
        pool_args: dict[str, Any] = {
            "pool_size": s.pool_size,
            "max_overflow": s.max_overflow,
            "pool_timeout": s.pool_timeout,
            "pool_recycle": s.pool_recycle,
            # LIFO keeps the busiest connections warm and lets surplus ones age out.
            "pool_use_lifo": True,
            # Every statement is a single read: no BEGIN/ROLLBACK round trips around it.
            "isolation_level": "AUTOCOMMIT",
        }
        if s.cloud_sql is not None:
            creator = self._cloud_sql_creator(s.cloud_sql, driver_args)
            engine = create_engine("postgresql+pg8000://", creator=creator, **pool_args)
        else:
            connect_args = {**s.connect_args, **driver_args}
            engine = create_engine(s.url or "", connect_args=connect_args, **pool_args)
        self._listen(engine)
        return engine

    def _cloud_sql_creator(self, cs: CloudSql, driver_args: dict[str, Any]) -> Any:
        """One Connector for the process, lazy certificate refresh (CPU is throttled when idle)."""
        from google.cloud.sql.connector import Connector, IPTypes  # heavy: only on this path

        self._connector = connector = Connector(
            ip_type=IPTypes[cs.ip_type],
            enable_iam_auth=cs.iam_auth,
            refresh_strategy="lazy",
            timeout=math.ceil(self.settings.connect_timeout),
        )

        def creator() -> Any:
            try:
                return connector.connect(
                    cs.instance,
                    "pg8000",
                    user=cs.user,
                    password=cs.password,
                    db=cs.database,
                    **driver_args,
                )
            except Exception as exc:  # API, DNS, TLS, credentials: all mean "cannot connect now"
                raise ConnectError(f"Cloud SQL connector: {type(exc).__name__}: {exc}") from exc

        return creator

    def _listen(self, engine: Engine) -> None:
        read_timeout = self.settings.statement_timeout_ms / 1000 + self.settings.connect_timeout

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            # pg8000 keeps its connect timeout as the socket timeout for every later read;
            # a read may legitimately last as long as statement_timeout, plus a margin.
            sock = getattr(dbapi_connection, "_usock", None)
            if sock is not None:
                sock.settimeout(read_timeout)
            record.info["idle_since"] = time.monotonic()

        @event.listens_for(engine, "checkin")
        def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info["idle_since"] = time.monotonic()

        @event.listens_for(engine, "handle_error")
        def on_error(ctx: ExceptionContext) -> InterfaceError | None:
            # pg8000 lets some socket errors (reset by peer, read timeout) escape unwrapped.
            # They mean the connection is dead: say so, so the pool drops it and callers
            # see the same disconnect error as for any other network failure.
            if ctx.sqlalchemy_exception is None and isinstance(ctx.original_exception, OSError):
                ctx.is_disconnect = True
                return InterfaceError(
                    ctx.statement,
                    ctx.parameters,
                    ctx.original_exception,
                    connection_invalidated=True,
                )
            return None

        @event.listens_for(engine, "checkout")
        def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
            if time.monotonic() - record.info.get("idle_since", 0.0) < PING_AFTER_IDLE_S:
                return
            try:
                cursor = dbapi_connection.cursor()
                cursor.execute("SELECT 1")
                cursor.close()
            except Exception as exc:
                log.warning("dropping a dead pooled connection (%s)", type(exc).__name__)
                raise DisconnectionError() from exc  # the pool retries with a new connection
