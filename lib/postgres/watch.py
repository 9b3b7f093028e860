"""Watch a request while it waits on the database or on its client, and stop what nobody
will use: a statement still running when the client has gone away or the request's
deadline (REQUEST_TIMEOUT) has passed is cancelled on the server, and a client that reads
nothing of a streamed listing for CLIENT_IDLE_TIMEOUT seconds has its connection ended.

One daemon thread per process polls the watched requests every POLL_S; it starts on the
first watched statement (never at import, never across a fork). A cancel that arrives after
its statement has ended could cancel that connection's next statement, so a connection
whose statement outran its cancel is discarded instead of going back to the pool.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

from lib.errors import Cancelled
from lib.postgres import driver
from lib.postgres.diagnosis import QUERY_CANCELED, sqlstate

log = logging.getLogger(__name__)

POLL_S = 0.05
CLIENT_LEFT = "client_left"
DEADLINE = "deadline"
CLIENT_IDLE = "client_idle"


def client_gone(sock: socket.socket | None) -> bool:
    """Has the peer closed this socket? (A request body or pipelined request waiting to be
    read hides it: then False.)"""
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Watch:
    """One request: its deadline, its client's socket (None when the server does not give
    it, as outside gunicorn), the statement it runs now and its streamed writes."""

    def __init__(
        self,
        deadline: float = math.inf,
        client: socket.socket | None = None,
        idle_write_s: float = math.inf,
    ) -> None:
        self.deadline = deadline  # time.monotonic()
        self.client = client
        self.idle_write_s = idle_write_s
        self.reason: str | None = None  # why the request was cut short, once it is
        self._lock = threading.Lock()
        self._running: Any = None  # the DB-API connection whose statement runs now
        self._cancel_sent = False
        self._wrote_at: float | None = None  # streaming: when the client last took a slice

    @classmethod
    def of(cls, environ: dict[str, Any], request_timeout: float, idle_write_s: float) -> Watch:
        """The watch for a WSGI request (gunicorn, as under functions-framework and Cloud
        Run, gives the client's socket)."""
        return cls(time.monotonic() + request_timeout, environ.get("gunicorn.socket"), idle_write_s)

    @contextlib.contextmanager
    def statement(self, conn: PoolProxiedConnection) -> Iterator[None]:
        """Around one statement on `conn`: raises Cancelled if the client left or the
        deadline passed, before it starts or while it runs (then cancelled on the server)."""
        if self.reason is None and time.monotonic() >= self.deadline:
            self.reason = DEADLINE
        if self.reason is not None:
            raise Cancelled(self.reason)
        with self._lock:
            self._running, self._cancel_sent = conn.dbapi_connection, False
        _watcher.add(self)
        try:
            yield
        except Exception as exc:
            if self._cancel_sent and sqlstate(exc) == QUERY_CANCELED:
                raise Cancelled(self.reason or DEADLINE) from exc
            raise
        finally:
            with self._lock:
                self._running, outran = None, self._cancel_sent
            if self._wrote_at is None:
                _watcher.discard(self)
        if outran:  # the statement ended before the cancel reached it
            conn.invalidate()
            raise Cancelled(self.reason or DEADLINE)

    def cancel(self, reason: str) -> None:
        """Cancel the running statement, if any, on the server (from any thread)."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            running, sent = self._running, self._cancel_sent
            if running is None or sent:
                return
            self._cancel_sent = True
            try:
                driver.cancel(running)
            except OSError as exc:
                log.warning("could not cancel a statement (%s): %s", reason, exc)
                return
        log.info("cancelled a running statement: %s", reason)

    def streaming(self) -> None:
        """The client took the last slice (or streaming starts): reset the idle clock."""
        self._wrote_at = time.monotonic()
        _watcher.add(self)

    def done(self) -> None:
        self._wrote_at = None
        _watcher.discard(self)

    def check(self, now: float) -> None:
        """The watcher's look at this request."""
        if self._running is not None and not self._cancel_sent:
            if now >= self.deadline:
                self.cancel(DEADLINE)
            elif client_gone(self.client):
                self.cancel(CLIENT_LEFT)
        wrote_at = self._wrote_at
        if wrote_at is not None and now - wrote_at > self.idle_write_s and self.reason is None:
            self.reason = CLIENT_IDLE
            if self.client is not None:  # the server's blocked write then fails (EPIPE)
                with contextlib.suppress(OSError):
                    self.client.shutdown(socket.SHUT_RDWR)


class _Watcher:
    """The one polling thread of this process, and the requests it watches."""

    def __init__(self) -> None:
        self._watches: set[Watch] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        with self._cond:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, watch: Watch) -> None:
        with self._cond:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watches:
                    self._cond.wait()
                watches = list(self._watches)
            now = time.monotonic()
            for watch in watches:
                try:
                    watch.check(now)
                except Exception:  # the watcher must outlive any one request
                    log.exception("watching a request failed")
            time.sleep(POLL_S)


_watcher = _Watcher()


def _forget_parent() -> None:
    """In a forked child: the parent's thread did not come along."""
    global _watcher
    _watcher = _Watcher()


os.register_at_fork(after_in_child=_forget_parent)
