"""Fault injection for the chaos suite: a TCP proxy that can delay, black-hole or reset
traffic, and a bounded concurrent HTTP load that records every answer."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


class TcpProxy:
    """127.0.0.1:<port> -> upstream. Modes: pass, delay (seconds), blackhole, reset."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode, self.delay = "pass", 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
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

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.set("reset")

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
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
                with contextlib.suppress(OSError):
                    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a failing network or proxy would. shutdown() first:
    a plain close() leaves a recv() blocked in another thread holding the socket open."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@dataclass
class Answer:
    started: float  # monotonic
    seconds: float
    status: int  # 0: no HTTP answer at all
    json_body: bool
    body: bytes = b""


@dataclass
class Load:
    """`clients` keep-alive connections sending GETs until stopped (bounded in time and count)."""

    base: str
    clients: int = 8
    path: str = "/"
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        for _ in range(100_000):
            if self._stop.is_set():
                break
            started = time.monotonic()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                status = response.status
            except OSError:
                conn.close()
                status, body = 0, b""
            try:
                json.loads(body)
                is_json = True
            except ValueError:
                is_json = False
            answer = Answer(started, time.monotonic() - started, status, is_json, body)
            with self._lock:
                self.answers.append(answer)
            if status != 200:
                time.sleep(0.02)  # as a client honouring Retry-After would, briefly

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.started < end]
