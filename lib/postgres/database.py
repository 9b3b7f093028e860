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

from lib.config import Settings
from lib.database_url import connect as connect_url
from lib.errors import ConnectionLost, PoolBusy
from lib.postgres import backoff, driver
from lib.postgres.diagnosis import is_disconnect
from lib.postgres.gate import Gate, Refusal
from lib.postgres.last_known import LastKnown
from lib.postgres.replicas import Replicas
from lib.postgres.session import Session

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
        # lib.connectors.cloud_sql.CloudSqlConnect or lib.connectors.alloydb.AlloyDbConnect,
        # imported lazily
        self._cloud_sql: Any = None
        self._gate: Gate | None = None  # the connect gate of whichever path, once built
        # When a connection was last found dead: pooled ones idle since then are checked first.
        self._lost_at = 0.0
        self._waiting = 0  # requests inside checkout(), for pool_state()
        self.session = Session(settings)
        self.last_known = LastKnown()
        self._admission = Admission(settings)
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
        DB_MAX_WAITING requests already wait (PoolBusy): shedding load beats queueing it. Nor
        while the database is down and no pooled connection is idle: the gate's Refusal then
        answers at once, without taking a place in the pool's queue.
        """
        self._admission.enter()
        with self._lock:
            self._waiting += 1
        try:
            engine = self.engine()
            pool: Any = engine.pool  # QueuePool
            gate = self._gate
            if gate is not None and not pool.checkedin() and gate.refusing():
                raise gate.refusal()
            return engine.raw_connection()
        except BaseException as exc:
            self._admission.leave()
            if isinstance(exc, Exception) and not isinstance(exc, Refusal):
                self.last_known.failed(exc)  # a refusal repeats a failure already noted
            gate = self._gate
            if isinstance(exc, PoolTimeout) and gate is not None and not gate.healthy:
                # The slots were held by connects that fail or hang, not by busy
                # connections: answer the connect failure, not "pool exhausted".
                raise gate.refusal()  # noqa: B904 - its __cause__ is the connect failure
            raise
        finally:
            with self._lock:
                self._waiting -= 1

    def release(self, conn: PoolProxiedConnection) -> None:
        conn.close()
        self._admission.leave()

    def fetch(self, conn: PoolProxiedConnection, sql: str) -> list[Any]:
        """Run one statement and return its rows: the hot path, on the DB-API connection.

        SQLAlchemy's Connection/Result layer would double the client-side cost of a request;
        the pool is all we need from it. A dead connection is discarded (with every pooled one
        idle since, on their next checkout) and raised as ConnectionLost.
        """
        try:
            rows = driver.fetch(conn, sql)
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
            self._gate = None

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's pool without touching its sockets."""
        self._lock = threading.Lock()  # the parent's lock may have been held by a thread
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine = None
        self._cloud_sql = None  # its event-loop thread did not survive the fork
        self._gate = None
        self.session = Session(self.settings)
        self.last_known = LastKnown()

    def _build(self) -> Engine:
        s = self.settings
        driver_args: dict[str, Any] = {
            "application_name": s.application_name,
            "startup_params": self.session.startup_params(),
            "timeout": s.connect_timeout,
        }
        if s.cloud_sql is not None:
            from lib.connectors.cloud_sql import (
                CloudSqlConnect,  # imports the connector: only on this path
            )

            creator = self._cloud_sql = CloudSqlConnect(
                s.cloud_sql, driver_args, s.connect_timeout, self.session.replicas
            )
            self._gate = creator.gate
        elif s.alloydb is not None:
            from lib.connectors.alloydb import (
                AlloyDbConnect,  # imports the connector: only on this path
            )

            creator = self._cloud_sql = AlloyDbConnect(
                s.alloydb, driver_args, s.connect_timeout, self.session.replicas
            )
            self._gate = creator.gate
        else:
            url, session = s.url, self.session  # config.load sets url or cloud_sql
            # An attempt costs the server a TCP connect or a login: one a second at most.
            gate = self._gate = Gate("the database", longest=backoff.FIRST_S)

            def attempt(deadline: float, accepted: Any) -> driver.Connection:
                return connect_url.connect(
                    url,
                    timeout=deadline - time.monotonic(),
                    application_name=s.application_name,
                    session=session,
                    accepted=accepted,
                )

            def creator() -> driver.Connection:
                return gate.connect(attempt, s.connect_timeout)

        if self._gate is not None:
            self.last_known.connects = self._gate.state
        engine = create_engine(driver.DIALECT, creator=creator, **self._pool_args())
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
        s = self.settings
        # A read may legitimately last as long as statement_timeout, plus a margin.
        read_timeout = s.statement_timeout_ms / 1000 + s.connect_timeout

        def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            configure(dbapi_connection, record, self.session, read_timeout)

        def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
            check(dbapi_connection, record, s.idle_timeout, self._lost_at, self.session.replicas)

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "checkout", on_checkout)
        event.listen(engine, "checkin", idle_from_now)


class Admission:
    """Connections plus DB_MAX_WAITING waiters: past that, a request is refused at once
    (PoolBusy, a 503) rather than queued. No limit when DB_MAX_WAITING is not set."""

    def __init__(self, settings: Settings) -> None:
        limit = settings.max_waiting
        self._slots = (
            threading.BoundedSemaphore(settings.pool_size + settings.max_overflow + limit)
            if limit is not None
            else None
        )

    def enter(self) -> None:
        if self._slots is not None and not self._slots.acquire(blocking=False):
            raise PoolBusy()

    def leave(self) -> None:
        if self._slots is not None:
            self._slots.release()


def configure(
    dbapi_connection: Any, record: ConnectionPoolEntry, session: Session, read_timeout: float
) -> None:
    """A new connection: its read timeout, the session's checks, idle from now."""
    driver.set_read_timeout(dbapi_connection, read_timeout)
    session.configure(dbapi_connection)
    idle_from_now(dbapi_connection, record)
    record.info.update(session.replicas.opened(dbapi_connection))  # its server, for check()
    record.info["fresh"] = True  # chosen by the connect just now: check() hands it out as is


def idle_from_now(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def check(
    dbapi_connection: Any,
    record: ConnectionPoolEntry,
    idle_timeout: float,
    lost_at: float,
    replicas: Replicas,
) -> None:
    """At checkout: is this pooled connection still worth handing out? Raising
    DisconnectionError makes the pool open a new one instead.

    A connection opened for this very checkout is never refused: SQLAlchemy opens one new
    connection after a refusal and gives up with "This connection is closed" (a 500) if that
    one is refused too. The connect that opened it already chose its server."""
    if record.info.pop("fresh", False):
        return
    idle_since = record.info.get("idle_since", 0.0)
    idle = time.monotonic() - idle_since
    if idle_timeout and idle > idle_timeout:
        # Idle past DB_IDLE_TIMEOUT: the server may already have closed it
        # (idle_session_timeout); open a new one rather than trust this one.
        raise DisconnectionError("idle timeout")
    try:
        # A standby's lag check (at most one per check interval) is also the ping.
        retire, pinged = replicas.checkout(dbapi_connection, record.info)
        if retire is not None:
            raise DisconnectionError(retire)
        if pinged or (idle < PING_AFTER_IDLE_S and idle_since > lost_at):
            return  # in steady use, and no connection found dead since: no round trip
        driver.fetch(dbapi_connection, "SELECT 1")
    except DisconnectionError:
        raise
    except Exception as exc:
        log.warning("dropping a dead pooled connection (%s)", type(exc).__name__)
        raise DisconnectionError() from exc  # the pool retries with a new connection
