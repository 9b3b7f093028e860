"""What real clients see on the wire from `functions-framework --target users` (gunicorn):
gzip decoded by http.client + zlib and by curl, every listing with its Content-Length, and a
database lost while a listing is read answered as a status, never as part of a 200."""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import socket
import subprocess
import time
import zlib

import pytest

from devtools import seed
from tests.conftest import slow_users, terminate_function_connections

pytestmark = pytest.mark.slow

STREAMED_USERS = 6000  # past one page of 5,000 (lib/listing/pages.PAGE_ROWS): two statements


def request_line(served) -> dict:
    """The function's one request log line (written once the server closed the response)."""
    deadline = time.monotonic() + 10
    while True:
        lines = served.log.read_text(errors="replace").splitlines()
        entries = [json.loads(line) for line in lines if '"httpRequest"' in line]
        if entries or time.monotonic() > deadline:
            [entry] = entries
            return entry
        time.sleep(0.1)


def http_get(served, path: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    host, port = served.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


@pytest.fixture
def live(admin, serve):
    seed.seed_users(admin, STREAMED_USERS, progress=False)
    return serve()


def test_gzip_decodes_with_http_client_and_curl_whole_and_streamed(live):
    for path in ("/?limit=1000", "/"):  # one statement, then a transaction of two
        status, headers, plain = http_get(live, path, {})
        assert status == 200 and "Content-Encoding" not in headers
        status, headers, packed = http_get(live, path, {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
        assert "Transfer-Encoding" not in headers
        assert int(headers["Content-Length"]) == len(packed)
        assert gzip.decompress(packed) == plain
        assert zlib.decompress(packed, 16 + zlib.MAX_WBITS) == plain
        if shutil.which("curl"):
            out = subprocess.run(
                ["curl", "-sS", "--compressed", "--fail", live.base + path],
                capture_output=True,
                check=True,
                timeout=30,
            ).stdout
            assert out == plain
        assert len(json.loads(plain)["users"]) == (1000 if "limit" in path else STREAMED_USERS)


def read_raw(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or `seconds` pass (False)."""
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return data, True
        data += chunk
    return data, False


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body, and whether its last (zero-size) chunk arrived."""
    payload = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        if not _:
            break
        size = int(size_line, 16)
        if size == 0:
            return payload, True
        payload, body = payload + rest[:size], rest[size + 2 :]
    return payload, False


def test_doubled_leading_slashes_are_served_as_the_single_slash_path(admin, serve):
    """What docs/http-api.md says of `//`: the server hands the function the merged path."""
    served = serve()
    for path, key in (("//", "users"), ("//healthz", "status"), ("///", "users")):
        status, _, body = http_get(served, path, {})
        assert status == 200 and key in json.loads(body), path
    assert http_get(served, "/healthz//", {})[0] == 404


def test_a_database_lost_twice_while_a_listing_is_read_is_a_503_not_part_of_a_200(admin, serve):
    """The connection dies under the second page, and so does the one the listing is read
    again on: nothing was sent yet, so the client gets a 503 with Retry-After (before, the
    200 was on the wire and the stream could only be cut)."""
    seed.seed_users(admin, STREAMED_USERS, progress=False)
    # The second page sleeps (on row 5,500) until the test kills the function's connection.
    slow_users(admin, "(SELECT pg_sleep(CASE WHEN r.id = 5500 THEN 30 ELSE 0 END))")
    served = serve()
    sock = socket.create_connection(served.base.removeprefix("http://").split(":"), timeout=20)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(2):  # the read, then its one retry on a fresh connection
        deadline = time.monotonic() + 10
        while not terminate_function_connections(admin) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    received, _ = read_raw(sock, 20)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head, head
    assert json.loads(body)["error"]["code"] == "database_unavailable"
    line = request_line(served)
    assert line["retried"] is True and "truncated" not in line
    assert "Traceback" not in served.log.read_text(errors="replace")


def test_a_connection_lost_while_a_listing_is_read_is_retried_once_and_it_completes(admin, serve):
    seed.seed_users(admin, STREAMED_USERS, progress=False)
    admin.cursor().execute("CREATE TABLE gate (shut boolean)")
    admin.cursor().execute("INSERT INTO gate VALUES (true)")
    # The second page sleeps (on row 5,500) while the gate is shut.
    slow_users(
        admin, "(SELECT pg_sleep(CASE WHEN r.id = 5500 AND EXISTS (SELECT FROM gate) THEN 30 END))"
    )
    admin.cursor().execute("GRANT SELECT ON gate TO PUBLIC")
    served = serve()
    sock = socket.create_connection(served.base.removeprefix("http://").split(":"), timeout=20)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)  # the second page is sleeping
    admin.cursor().execute("DELETE FROM gate")
    assert terminate_function_connections(admin) == 1
    received, _ = read_raw(sock, 20)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length" in head
    assert len(json.loads(body)["users"]) == STREAMED_USERS
    line = request_line(served)
    assert line["retried"] is True and "truncated" not in line


def test_a_body_that_never_comes_neither_delays_the_answer_nor_holds_a_thread(admin, serve):
    """The function reads no request body, but functions-framework read it after the handler
    returned: a client declaring a body it never sent held a thread, its answer unsent, for
    as long as it liked (two such clients froze a THREADS=2 function)."""
    seed.seed_users(admin, 5, progress=False)
    served = serve(THREADS="2")
    address = served.base.removeprefix("http://").split(":")
    stalled = []
    for request in (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc",
        b"GET /?limit=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ):
        sock = socket.create_connection(address, timeout=15)
        sock.sendall(request)  # and never the rest of the body
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith((b"HTTP/1.1 405", b"HTTP/1.1 200")), answer[:100]
        stalled.append(sock)
    # Both threads are free again (gunicorn drains a body for at most 5 s): others are served
    # while the stalled clients still hold their connections open.
    status, _, body = http_get(served, "/healthz", {})
    assert status == 200 and json.loads(body)["status"] == "ok"
    for sock in stalled:
        sock.close()


def test_a_client_leaving_mid_body_is_logged_as_truncated_not_as_a_success(admin, serve):
    seed.seed_users(admin, 100_000, progress=False)  # ~11 MB: far more than loopback buffers
    served = serve()
    host, port = served.base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the window is agreed
    sock.settimeout(20)
    sock.connect((host, int(port)))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()
    line = request_line(served)
    assert line["truncated"] is True and line["cause"].startswith("client_closed")
    assert line["severity"] == "INFO", line  # the client's doing, not an error of ours
    assert line["bytes"] < 10_000_000  # the rest was never sent
    assert "Traceback" not in served.log.read_text(errors="replace")
