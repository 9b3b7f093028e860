"""The engine and its bounded pool: built lazily, once per process, never across a fork.

functions-framework imports `main.py` in the gunicorn master and serves requests in a
forked worker. A socket or thread made at import would be shared with (or dead in) the
worker, so nothing here connects, or starts the Cloud SQL Connector's thread, until the
first request asks for the engine.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from lib import connect_url
from lib.config import Settings
from lib.failures import ConnectionLost, PoolBusy, is_disconnect
from lib.last_known import LastKnown
from lib.session import Session

log = logging.getLogger(__name__)


class _QuietDeadClose(logging.Filter):
    """Closing a connection that is already dead fails by nature (pg8000 first tries to say
    goodbye on it); SQLAlchemy logs each such failure with a traceback. Drop those lines:
    the death itself is logged once, where it is found."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            ("Exception closing connection", "Exception terminating connection")
        )


logging.getLogger("sqlalchemy.pool.impl.QueuePool").addFilter(_QuietDeadClose())

# A connection unused for this long may have been cut while the instance was idle or
# frozen (NAT, proxies, failover): check it with one round trip before handing it out.
# A connection in steady use is never checked, so the hot path stays one round trip.
PING_AFTER_IDLE_S = 5.0


class Database:
    """Owns this process's SQLAlchemy engine (and Cloud SQL Connector, if used)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._cloud_sql: Any = None  # lib.cloud_sql.CloudSqlConnect, imported lazily
        # When a connection was last found dead: pooled ones idle since then are checked first.
        self._lost_at = 0.0
        self._waiting = 0  # requests inside checkout(), for pool_state()
        self.session = Session(settings)
        self.last_known = LastKnown()
        # Admission: connections plus waiters; past it a request is refused at once (503).
        self._admission = (
            threading.BoundedSemaphore(
                settings.pool_size + settings.max_overflow + settings.max_waiting
            )
            if settings.max_waiting is not None
            else None
        )
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

    def checkout(self) -> PoolProxiedConnection:
        """A pooled DB-API connection, to hand back with `release`.

        Waits at most DB_POOL_TIMEOUT (then sqlalchemy's TimeoutError), and not at all when
        DB_MAX_WAITING requests already wait (PoolBusy): shedding load beats queueing it.
        """
        if self._admission is not None and not self._admission.acquire(blocking=False):
            raise PoolBusy()
        with self._lock:
            self._waiting += 1
        try:
            return self.engine().raw_connection()
        except BaseException as exc:
            if self._admission is not None:
                self._admission.release()
            if isinstance(exc, Exception):
                self.last_known.failed(exc)
            cloud_sql = self._cloud_sql
            if isinstance(exc, PoolTimeout) and cloud_sql is not None and not cloud_sql.healthy:
                # The slots were held by connects that fail or hang, not by busy
                # connections: answer the connect failure, not "pool exhausted".
                raise cloud_sql.refusal()  # noqa: B904 - its __cause__ is the connect failure
            raise
        finally:
            with self._lock:
                self._waiting -= 1

    def release(self, conn: PoolProxiedConnection) -> None:
        conn.close()
        if self._admission is not None:
            self._admission.release()

    def fetch(self, conn: PoolProxiedConnection, sql: str) -> list[Any]:
        """Run one statement and return its rows: the hot path, on the DB-API connection.

        SQLAlchemy's Connection/Result layer would double the client-side cost of a request;
        the pool is all we need from it. A dead connection is discarded (with every pooled one
        idle since, on their next checkout) and raised as ConnectionLost.
        """
        cursor = conn.cursor()
        try:
            cursor.execute(sql)
            rows = cursor.fetchall()
        except Exception as exc:
            self.last_known.failed(exc)
            if not is_disconnect(exc):
                raise
            self._lost_at = time.monotonic()
            conn.invalidate(exc)
            raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
        self.last_known.ok()
        return rows

    def pool_state(self) -> dict[str, Any]:
        """The pool's counters, read without touching the database (for logs and /healthz)."""
        engine = self._engine
        if engine is None:
            return {"started": False, "size": self.settings.pool_size}
        pool: Any = engine.pool  # QueuePool
        return {
            "started": True,
            "size": self.settings.pool_size,
            "max_overflow": self.settings.max_overflow,
            "in_use": pool.checkedout(),
            "idle": pool.checkedin(),
            "waiting": self._waiting,
        }

    def close(self) -> None:
        """Close every pooled connection and the Connector (at shutdown)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            if self._cloud_sql is not None:
                self._cloud_sql.close()
                self._cloud_sql = None

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's pool without touching its sockets."""
        self._lock = threading.Lock()  # the parent's lock may have been held by a thread
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine = None
        self._cloud_sql = None  # its event-loop thread did not survive the fork
        self.session = Session(self.settings)
        self.last_known = LastKnown()

    def _build(self) -> Engine:
        s = self.settings
        if s.cloud_sql is not None:
            driver_args: dict[str, Any] = {
                "application_name": s.application_name,
                "startup_params": self.session.startup_params(),
                "timeout": s.connect_timeout,
            }
            from lib.cloud_sql import CloudSqlConnect  # imports the connector: only on this path

            creator = self._cloud_sql = CloudSqlConnect(s.cloud_sql, driver_args, s.connect_timeout)
        else:
            url, session = s.url, self.session  # config.load sets url or cloud_sql

            def creator() -> connect_url.Connection:
                return connect_url.connect(
                    url,
                    timeout=s.connect_timeout,
                    application_name=s.application_name,
                    session=session,
                )

        engine = create_engine("postgresql+pg8000://", creator=creator, **self._pool_args())
        self._listen(engine)
        return engine

    def _pool_args(self) -> dict[str, Any]:
        s = self.settings
        return {
            "pool_size": s.pool_size,
            "max_overflow": s.max_overflow,
            "pool_timeout": s.pool_timeout,
            "pool_recycle": s.pool_recycle,
            # LIFO keeps the busiest connections warm and lets surplus ones age out.
            "pool_use_lifo": True,
            # Every statement is a single read: no BEGIN/ROLLBACK round trips around it.
            "isolation_level": "AUTOCOMMIT",
        }

    def _listen(self, engine: Engine) -> None:
        read_timeout = self.settings.statement_timeout_ms / 1000 + self.settings.connect_timeout
        idle_timeout = self.settings.idle_timeout

        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            # pg8000 keeps its connect timeout as the socket timeout of every later read;
            # a read may legitimately last as long as statement_timeout, plus a margin.
            sock = getattr(dbapi_connection, "_usock", None)
            if sock is not None:
                sock.settimeout(read_timeout)
            self.session.configure(dbapi_connection)
            record.info["idle_since"] = time.monotonic()

        @event.listens_for(engine, "checkin")
        def on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info["idle_since"] = time.monotonic()

        @event.listens_for(engine, "checkout")
        def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
            idle_since = record.info.get("idle_since", 0.0)
            idle = time.monotonic() - idle_since
            if idle_timeout and idle > idle_timeout:
                # Idle past DB_IDLE_TIMEOUT: the server may already have closed it
                # (idle_session_timeout); open a new one rather than trust this one.
                raise DisconnectionError("idle timeout")
            if idle < PING_AFTER_IDLE_S and idle_since > self._lost_at:
                return
            try:
                cursor = dbapi_connection.cursor()
                cursor.execute("SELECT 1")
                cursor.close()
            except Exception as exc:
                log.warning("dropping a dead pooled connection (%s)", type(exc).__name__)
                raise DisconnectionError() from exc  # the pool retries with a new connection
