"""What real clients see on the wire from `functions-framework --target users` (gunicorn):
gzip decoded by http.client + zlib and by curl, and a stream cut mid-way that stays visibly
incomplete while the function's log says exactly what happened."""

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

STREAMED_USERS = 6000  # past one page of 5,000 (lib/listing.PAGE_ROWS): streamed


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
    for path in ("/?limit=1000", "/"):  # whole, then streamed (chunked)
        status, headers, plain = http_get(live, path, {})
        assert status == 200 and "Content-Encoding" not in headers
        status, headers, packed = http_get(live, path, {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
        assert ("Transfer-Encoding" in headers) == (path == "/")
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


@pytest.mark.parametrize("accept", ["identity", "gzip"])
def test_a_stream_cut_mid_way_is_visibly_incomplete_and_logged_as_an_error(admin, serve, accept):
    """The database connection dies after the first page was sent, and so does the one the
    page is retried on: the client's transfer ends without the chunked terminator, and the
    function logs one ERROR line saying truncated, the bytes sent and why, with no
    plain-text traceback anywhere."""
    seed.seed_users(admin, STREAMED_USERS, progress=False)
    # The second page sleeps (on row 5,500) until the test kills the function's connection.
    slow_users(admin, "(SELECT pg_sleep(CASE WHEN r.id = 5500 THEN 30 ELSE 0 END))")
    served = serve()
    sock = socket.create_connection(served.base.removeprefix("http://").split(":"), timeout=20)
    sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {accept}\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received or len(received) < 2000:  # headers and the first page
        received += sock.recv(65536)
    time.sleep(0.3)  # let it start the second page (killing its connection cuts it either way)
    assert terminate_function_connections(admin) == 1
    time.sleep(0.3)  # the page is retried once on a new connection: end that one too
    assert terminate_function_connections(admin) == 1
    rest, closed = read_raw(sock, 20)
    sock.close()
    head, _, body = (received + rest).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    payload, terminated = dechunk(body)
    assert closed and not terminated and not body.endswith(b"0\r\n\r\n")
    if accept == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = decoder.decompress(payload)
        assert not decoder.eof  # no gzip trailer either
    else:
        text = payload
    assert text.startswith(b'{"users":[') and text.count(b'"id":') == 5000
    with pytest.raises(ValueError):
        json.loads(text)
    line = request_line(served)
    assert line["severity"] == "ERROR" and line["truncated"] is True
    assert line["bytes"] == len(payload)
    assert line["cause"].startswith("database_unavailable: ")
    assert "ConnectionLost" in line["cause"]  # classified by lib/postgres/diagnosis.py
    log = served.log.read_text(errors="replace")
    assert "Traceback" not in log
    assert all(text.startswith("{") for text in log.splitlines() if text.strip())


def test_a_connection_lost_mid_stream_is_retried_once_and_the_stream_completes(admin, serve):
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
    received = b""
    while b"\r\n\r\n" not in received or len(received) < 2000:
        received += sock.recv(65536)
    time.sleep(0.3)
    admin.cursor().execute("DELETE FROM gate")
    assert terminate_function_connections(admin) == 1
    rest, _ = read_raw(sock, 20)
    sock.close()
    payload, terminated = dechunk((received + rest).partition(b"\r\n\r\n")[2])
    assert terminated and len(json.loads(payload)["users"]) == STREAMED_USERS
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


def test_a_client_leaving_mid_stream_is_logged_as_truncated_not_as_a_success(admin, serve):
    seed.seed_users(admin, STREAMED_USERS, progress=False)
    # The second page waits a second: the client is gone when the function writes it.
    slow_users(admin, "(SELECT pg_sleep(CASE WHEN r.id = 5500 THEN 1 ELSE 0 END))")
    served = serve()
    sock = socket.create_connection(served.base.removeprefix("http://").split(":"), timeout=20)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()
    line = request_line(served)
    assert line["truncated"] is True and line["cause"].startswith("client_closed")
    assert line["severity"] == "INFO", line  # the client's doing, not an error of ours
    assert line["bytes"] < 1_000_000  # the second page was never sent
    assert "Traceback" not in served.log.read_text(errors="replace")
