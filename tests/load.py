"""The one HTTP client of the tests that talk to a served function: a single GET, or a
bounded concurrent load that records every answer."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """One GET on a new connection: the status and the body, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Answer:
    started: float  # monotonic
    seconds: float
    status: int  # 0: no HTTP answer at all
    json_body: bool
    body: bytes = b""


@dataclass
class Load:
    """`clients` keep-alive connections sending GETs until stopped, or until each has sent
    `requests` (bounded in count and time either way); after an answer other than 200 each
    pauses `pause` s, as a client honouring Retry-After would, briefly."""

    base: str
    clients: int = 8
    path: str = "/"
    requests: int = 100_000
    timeout: float = 30
    pause: float = 0.02
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
        self.join()

    def join(self, timeout: float = 60) -> None:
        """Wait for the clients to finish their requests (or to see the stop)."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(deadline - time.monotonic(), 0))

    def _run(self) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        for _ in range(self.requests):
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
                time.sleep(self.pause)
        conn.close()
