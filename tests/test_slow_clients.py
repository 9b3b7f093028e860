"""What a client that reads slowly, stalls or leaves costs: a worker thread and its spooled
body, never a database connection while it reads."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from devtools import seed
from lib.listing import pages as listing
from tests import load, report
from tests.conftest import insert_users

ROWS = [(f"u{i}@example.com", f"User {i}", "2024-01-01T00:00:00Z") for i in range(9)]


def test_a_stalled_reader_holds_no_connection(admin, make_app, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 2)  # five pages of two
    insert_users(admin, ROWS)
    app = make_app(DB_POOL_SIZE="1", DB_POOL_TIMEOUT="0.5")
    main = __import__("sys").modules["main"]
    client = app.test_client()
    stalled = client.get("/", buffered=False)
    chunks = iter(stalled.response)
    first = next(chunks)  # the client read one page, then stops reading
    assert main.DB.pool_state()["in_use"] == 0  # the whole listing is spooled
    # With a pool of one, the stalled reader would make this a 503 if it held the connection.
    paged = client.get("/?limit=3")
    assert paged.status_code == 200 and len(paged.get_json()["users"]) == 3
    body = first + b"".join(chunks)  # the stalled client reads on
    stalled.close()
    assert [u["id"] for u in json.loads(body)["users"]] == list(range(1, 10))
    assert main.DB.pool_state()["in_use"] == 0


class SlowReader:
    """A client with a 4 KB receive buffer reading the full listing at `rate` bytes/s
    (0: reads nothing) for at most `seconds`."""

    def __init__(self, port: int, rate: int, seconds: float) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.rate, self.seconds, self.got = rate, seconds, b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        deadline = time.monotonic() + self.seconds
        while self.rate and time.monotonic() < deadline and not self.stop.is_set():
            self.got += self.sock.recv(self.rate // 4)
            self.stop.wait(0.25)

    def rest(self) -> bytes:
        """Everything the server still sends, until it ends the connection."""
        self.thread.join()
        while data := self.sock.recv(65536):
            self.got += data
        self.sock.close()
        return self.got


def pool_in_use(base: str) -> int:
    status, body = load.get(base + "/healthz")
    assert status == 200
    return json.loads(body)["pool"]["in_use"]


@pytest.fixture
def streamed(admin):
    seed.seed_users(admin, 6000, progress=False)  # two pages of 5,000 (pages.PAGE_ROWS)


@pytest.mark.slow
def test_five_slow_readers_leave_the_pool_to_paging_clients(streamed, serve):
    served = serve()
    readers = [SlowReader(served.port, rate=4096, seconds=4) for _ in range(5)]
    deadline = time.monotonic() + 5  # until each has its listing's first bytes: it reads
    while not all(reader.got for reader in readers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(reader.got for reader in readers)
    samples = []
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        samples.append(pool_in_use(served.base))
        time.sleep(0.02)
    assert set(samples) == {0}  # while they read, the readers hold no connection
    answers: list[tuple[int, float]] = []

    def page_through() -> None:
        for _ in range(15):
            started = time.monotonic()
            status, _ = load.get(served.base + "/?limit=10", timeout=5)
            answers.append((status, time.monotonic() - started))

    pagers = [threading.Thread(target=page_through) for _ in range(2)]
    for pager in pagers:
        pager.start()
    for pager in pagers:
        pager.join(timeout=30)
    assert [status for status, _ in answers] == [200] * 30
    seconds = sorted(s for _, s in answers)
    report.figure(f"paging beside 5 slow readers: p99 {seconds[-1] * 1000:.0f} ms")
    assert seconds[int(len(seconds) * 0.99)] < 1
    assert all(reader.thread.is_alive() for reader in readers)  # still reading throughout
    for reader in readers:
        reader.stop.set()
        reader.thread.join()
        reader.sock.close()


@pytest.mark.slow
def test_a_client_that_reads_nothing_is_cut_as_its_own_fault(admin, serve):
    seed.seed_users(admin, 40_000, progress=False)  # more than the loopback buffers hold
    served = serve(CLIENT_IDLE_TIMEOUT="1")
    idle = SlowReader(served.port, rate=0, seconds=0)
    time.sleep(2)
    head, _, body = idle.rest().partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.startswith(b"Content-Length")
    )
    assert len(body) < length  # short of its Content-Length: visibly incomplete
    entry = next(
        json.loads(line) for line in served.output().splitlines() if '"httpRequest"' in line
    )
    assert entry["cause"] == "client_idle: the client read nothing for 1 s"
    assert entry["severity"] == "INFO"  # the client's doing, not the database's
    assert pool_in_use(served.base) == 0


def test_a_head_reads_the_listing_as_a_get_does_and_sends_no_body(admin, make_app, monkeypatch):
    """A HEAD answers with the headers a GET would: the same length and the same ETag."""
    monkeypatch.setattr(listing, "PAGE_ROWS", 2)
    insert_users(admin, ROWS)
    client = make_app(RESPONSE_CACHE="off").test_client()
    head, get = client.head("/"), client.get("/")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["ETag"] == get.headers["ETag"]
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.data))
