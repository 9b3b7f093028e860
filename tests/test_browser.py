"""A real browser on another origin: headless Chromium, driven over the DevTools protocol.

A page on an allowed origin fetches the function on another origin, pages through it by
reading `Link` (readable only because it is exposed), revalidates with If-None-Match (which
takes a preflight) and gets 304; a page on an origin not allowed is blocked by the browser.
Skips, saying why, when Chromium is not installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from devtools import seed
from devtools.devdb import free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
USERS = 120

PAGE_THROUGH = """
(async (start) => {
  const ids = [];
  let url = start, first = null;
  while (url) {
    const response = await fetch(url);
    if (response.status !== 200) return {error: `status ${response.status}`};
    first = first || response;
    ids.push(...(await response.json()).users.map((user) => user.id));
    const link = response.headers.get("Link");
    url = link && link.match(/<([^>]+)>;\\s*rel="next"/)[1];
  }
  const etag = first.headers.get("ETag");
  const again = await fetch(start, {headers: {"If-None-Match": etag}});
  return {ids, etag, revalidated: again.status};
})
"""

BLOCKED = """
(async (url) => {
  try { await fetch(url); return "read"; } catch (error) { return error.name; }
})
"""


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """An origin of its own on 127.0.0.1, serving one empty page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>page</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class Browser:
    """Headless Chromium with one tab, spoken to over the DevTools protocol's WebSocket."""

    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # as root, as CI runs
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                # Nothing but loopback: any other address goes to a closed local port.
                "--proxy-server=http://127.0.0.1:9",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderers and helpers: one group, stopped together
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = active.read_text().split("\n")[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            tab = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=30)
        self._ids = itertools.count(1)

    def call(self, method: str, **params: object) -> dict:
        message_id = next(self._ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                assert "error" not in message, message
                return message["result"]

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 15
        while self.evaluate("document.readyState") != "complete":
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)

    def evaluate(self, expression: str) -> object:
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        """Stop every process of the browser, so none still writes to the profile as it goes."""
        self.ws.close()
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:
                os.killpg(group, 0)  # raises once the whole group is gone
                time.sleep(0.05)
            os.killpg(group, signal.SIGKILL)


@pytest.fixture
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        opened = Browser(Path(profile))
        try:
            yield opened
        finally:
            opened.close()


def test_a_page_on_another_origin_pages_revalidates_and_another_is_blocked(admin, serve, browser):
    seed.seed_users(admin, USERS, progress=False)
    with page_server() as allowed, page_server() as stranger:
        served = serve(CORS_ALLOWED_ORIGINS=allowed)
        start = json.dumps(f"{served.base}/?limit=50")
        browser.open(allowed + "/")
        result = browser.evaluate(f"{PAGE_THROUGH}({start})")
        assert result["ids"] == list(range(1, USERS + 1))  # three pages, by Link
        assert result["etag"] and result["revalidated"] == 304
        browser.open(stranger + "/")
        assert browser.evaluate(f"{BLOCKED}({start})") == "TypeError"  # blocked by CORS
