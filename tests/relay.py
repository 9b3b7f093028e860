"""The one TCP relay of the tests: 127.0.0.1:<port> -> the test PostgreSQL, two threads a
connection. The chaos suite makes it the faulty network (delay, black hole, resets); the
outage tests count the connects it sees and make it a database that wakes (hold); the TLS
tests make it a TLS-enabled PostgreSQL's front door (the wheel's server has no TLS)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time


class Relay:
    """Relays every connection to `upstream`. Modes: pass, delay (seconds a chunk),
    blackhole (swallow everything), reset (RST every connection, new ones too), hold (a
    database waking: a new connection is accepted, and relayed only once `hold`'s moment
    has come). `accepted` is when each connection came, as the server would see it."""

    def __init__(self, upstream: tuple[str, int], unix_path: str | None = None) -> None:
        self.upstream = upstream
        self.mode, self.delay = "pass", 0.0
        self.until = 0.0  # hold: monotonic time from which connections are relayed
        self.accepted: list[float] = []  # monotonic
        if unix_path is None:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.port = self._listener.getsockname()[1]
        else:  # a Unix socket ("\0name" for Linux's abstract namespace)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(unix_path)
            self._listener.listen()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay
        if mode == "reset":
            with self._lock:
                for sock in list(self._sockets):
                    _reset(sock)
                self._sockets.clear()

    def hold(self, seconds: float) -> None:
        """Hold every connection that arrives in the next `seconds` until they have passed,
        then relay it (a login that waits for a database to wake); later ones pass at once."""
        self.until = time.monotonic() + seconds
        self.mode = "hold"

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.set("reset")

    def open(self, client: socket.socket) -> tuple[socket.socket, bytes]:
        """The client side to relay once the connection's opening is dealt with, and the
        bytes already read from it, for upstream."""
        return client, b""

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if self.mode == "reset":
            _reset(client)
            return
        if self.mode == "hold":
            time.sleep(max(self.until - time.monotonic(), 0))
        try:
            client, first = self.open(client)
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.sendall(first)
        except OSError:  # ssl.SSLError too: a client that rejected our certificate
            _reset(client)
            return
        upstream.settimeout(None)  # the timeout was for connecting only
        with self._lock:
            self._sockets.update((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.mode == "blackhole":
                    continue  # swallowed: the peer waits for an answer that never comes
                if self.mode == "delay":
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self._lock:
                    self._sockets.discard(sock)
                _close(sock)


class TlsFront(Relay):
    """What a TLS-enabled PostgreSQL does at the door: answer the client's SSLRequest, do the
    handshake with `context`'s certificate, then relay the decrypted protocol to the plain
    server. Records which connections were encrypted."""

    SSL_REQUEST = struct.pack("!ii", 8, 80877103)

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        self.encrypted: list[bool] = []
        super().__init__(upstream)

    def open(self, client: socket.socket) -> tuple[socket.socket, bytes]:
        first = client.recv(8, socket.MSG_WAITALL)
        if first != self.SSL_REQUEST:
            self.encrypted.append(False)
            return client, first
        client.sendall(b"S")
        tls = self.context.wrap_socket(client, server_side=True)
        self.encrypted.append(True)
        return tls, b""


def _close(sock: socket.socket) -> None:
    """shutdown() first: a plain close() leaves a recv() blocked in the other direction's
    thread holding the socket, and the connection, open."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a failing network or proxy would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)
