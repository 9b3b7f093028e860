"""Real clients page through the served function by following `next` exactly as their
documentation shows, with no glue: requests (`r.links['next']['url']`), httpx and Node's
fetch. Each sees every id exactly once."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
import requests

from devtools import seed

pytestmark = pytest.mark.slow

USERS = 250
LIMIT = 40  # seven pages, the last one short

NODE_PAGER = """
const ids = [];
let url = process.argv[1];
while (url) {
  const response = await fetch(url);
  if (response.status !== 200) throw new Error(`status ${response.status}`);
  const body = await response.json();
  ids.push(...body.users.map((user) => user.id));
  url = body.next;
}
console.log(JSON.stringify(ids));
"""


@pytest.fixture
def served(admin, serve):
    seed.seed_users(admin, USERS, progress=False)
    return serve()


def test_requests_follows_the_link_header(served):
    ids, url = [], f"{served.base}/?limit={LIMIT}"
    with requests.Session() as session:
        while url:
            response = session.get(url, timeout=10)
            assert response.status_code == 200
            ids += [user["id"] for user in response.json()["users"]]
            url = response.links.get("next", {}).get("url")
            assert url == response.json()["next"]  # the header and the body agree
    assert ids == list(range(1, USERS + 1))


def test_httpx_follows_the_body_next(served):
    ids, url = [], f"{served.base}/?limit={LIMIT}"
    with httpx.Client(timeout=10) as client:
        while url:
            body = client.get(url).raise_for_status().json()
            ids += [user["id"] for user in body["users"]]
            url = body["next"]
    assert ids == list(range(1, USERS + 1))


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_node_fetch_follows_the_body_next(served):
    done = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_PAGER, f"{served.base}/?limit={LIMIT}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == list(range(1, USERS + 1))
