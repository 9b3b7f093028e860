"""The /healthz lane (lib/http/health_lane.py): what it reads of gunicorn's gthread worker,
named here so that an upgrade that moves it fails this test, and how it sorts requests, on
real sockets. tests/test_outage.py has it answer while every request thread waits."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator

import pytest
from gunicorn.config import Config
from gunicorn.workers import gthread

from lib.http import health_lane


def test_the_parts_of_gunicorn_it_relies_on_are_where_it_expects():
    worker = gthread.ThreadWorker
    for method in ("enqueue_req", "handle", "finish_request", "on_pending_socket_readable"):
        assert callable(getattr(worker, method, None)), f"ThreadWorker.{method} moved"
    init = inspect.getsource(worker.__init__) + inspect.getsource(worker.init_process)
    for attribute in ("self.pending_conns", "self.poller", "self.method_queue", "self.tpool"):
        assert attribute in init, f"ThreadWorker no longer sets {attribute}"
    # A connection deferred to the poller is what murder_pending times out, by conn.timeout.
    assert "conn.timeout" in inspect.getsource(worker.murder_pending)
    assert isinstance(gthread.DEFAULT_WORKER_DATA_TIMEOUT, float)
    conn = gthread.TConn(Config(), socket.socket(), ("127.0.0.1", 1), ("127.0.0.1", 2))
    for attribute in ("sock", "parser", "initialized", "data_ready", "is_http2", "timeout"):
        assert hasattr(conn, attribute), f"TConn.{attribute} moved"
    conn.sock.close()
    # The pipelined case: what finish_request itself reads to requeue a connection.
    assert "conn.parser.unreader.buf.getvalue()" in inspect.getsource(worker.finish_request)


def test_install_patches_the_worker_once():
    health_lane.install()
    patched = gthread.ThreadWorker.enqueue_req
    health_lane.install()
    assert gthread.ThreadWorker.enqueue_req is patched and patched.health_lane


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, gthread.TConn]]:
    """A client socket, and the server side as gunicorn holds it."""
    client, server = socket.socketpair()
    conn = gthread.TConn(Config(), server, ("127.0.0.1", 1), ("127.0.0.1", 2))
    yield client, conn
    client.close()
    server.close()


@pytest.mark.parametrize(
    ("request_line", "lane"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "health"),
        (b"HEAD /healthz HTTP/1.1\r\n\r\n", "health"),
        (b"GET /healthz?verbose=1 HTTP/1.1\r\n\r\n", "health"),
        (b"GET / HTTP/1.1\r\n\r\n", "work"),
        (b"GET /?limit=5 HTTP/1.1\r\n\r\n", "work"),
        (b"GET /healthz/ HTTP/1.1\r\n\r\n", "work"),  # another path: a 404, from the queue
        (b"POST /healthz HTTP/1.1\r\n\r\n", "work"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "work"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "work"),  # a TLS ClientHello
    ],
)
def test_only_a_health_check_takes_the_lane(pair, request_line, lane):
    client, conn = pair
    client.sendall(request_line)
    assert health_lane._lane(conn, Config()) == lane
    assert conn.sock.recv(100) == request_line[:100]  # peeked, not consumed


def test_a_new_connection_without_its_request_yet_waits_in_the_poller(pair):
    _, conn = pair
    assert health_lane._lane(conn, Config()) == "not yet"
    conn.data_ready = True  # the poller found it readable: gunicorn's, as before
    assert health_lane._lane(conn, Config()) == "work"
