"""/healthz answered without waiting for a request thread.

gunicorn's gthread worker (what functions-framework serves with) queues every request for a
pool of THREADS threads in arrival order. During an outage or a wake those threads may all
be waiting on the database (each one a Cloud Run concurrency slot), and a health check
queued behind them would wait as long. But the worker's main loop sees every request before
it is queued: here it reads the request line without consuming it (MSG_PEEK), and a GET or
HEAD of /healthz runs on a thread of its own, never queued behind work. The whole app still
answers it (logs, headers), from what the process knows: /healthz opens no connection.

A new connection whose request has not arrived yet waits in the main loop's poller
(gunicorn's own list of connections that owe it data) for up to the worker's data timeout,
rather than on a request thread; any other request is queued as before. Pipelined requests,
TLS and HTTP/2 connections, whose next request cannot be peeked, take the queue too.

This patches gunicorn's ThreadWorker.enqueue_req (gunicorn 27, pinned by functions-framework
3.10); tests/test_health_lane.py fails, naming what moved, when an upgrade changes what it
relies on. `install` only patches the class: the lane's thread starts in the worker, with
the first health check.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from functools import partial
from typing import Any

_HEALTHZ = re.compile(rb"(GET|HEAD) /healthz[ ?]")
_PEEK_BYTES = 16  # "HEAD /healthz?" and one more
_HEALTH, _WORK, _NOT_YET = "health", "work", "not yet"


def install() -> None:
    """Route /healthz to its own thread in every gthread worker started from now on."""
    from gunicorn.workers import gthread

    worker_class: Any = gthread.ThreadWorker
    if getattr(worker_class.enqueue_req, "health_lane", False):
        return
    queue = worker_class.enqueue_req
    data_timeout = gthread.DEFAULT_WORKER_DATA_TIMEOUT

    def enqueue_req(self: Any, conn: Any) -> None:
        lane = _lane(conn, self.cfg)
        if lane == _HEALTH:
            future = _thread(self).submit(self.handle, conn)
            future.add_done_callback(
                lambda done: self.method_queue.defer(self.finish_request, conn, done)
            )
        elif lane == _NOT_YET:
            conn.timeout = time.monotonic() + data_timeout
            self.pending_conns.append(conn)
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
            )
        else:
            queue(self, conn)

    enqueue_req.health_lane = True  # type: ignore[attr-defined]
    worker_class.enqueue_req = enqueue_req


def _lane(conn: Any, cfg: Any) -> str:
    """Where this connection's next request goes, by its request line, unread."""
    if cfg.is_ssl or conn.is_http2:
        return _WORK
    if conn.parser is not None and conn.parser.unreader.buf.getvalue():
        return _WORK  # pipelined: already read from the socket, not peekable
    try:
        head = conn.sock.recv(_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        # Nothing yet. A new connection waits for its request in the poller; one the poller
        # found readable (kept alive, or woken there) is the queue's, as gunicorn has it.
        return _WORK if conn.initialized or conn.data_ready else _NOT_YET
    except OSError:
        return _WORK  # the request thread meets the error and closes the connection
    return _HEALTH if _HEALTHZ.match(head) else _WORK


def _thread(worker: Any) -> Any:
    """The worker's health thread (a ThreadPoolExecutor), started on first use, in the worker
    after the fork. Only the main loop calls this."""
    from concurrent.futures import ThreadPoolExecutor  # as gunicorn does, in the worker

    lane = worker.__dict__.get("health_lane")
    if lane is None:
        lane = worker.__dict__["health_lane"] = ThreadPoolExecutor(1, "healthz")
    return lane
