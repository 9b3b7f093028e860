"""The function as users run it: `functions-framework --target users` (gunicorn, forked worker)."""

from __future__ import annotations

import http.client
import json

import pytest

from devtools import seed
from tests.conftest import run_python
from tests.connections import PeakConnections
from tests.load import Load, get
from tests.report import figure

pytestmark = pytest.mark.slow

IMPORT_PROBE = """
import socket, sys, threading
connects = []
real_connect = socket.socket.connect
socket.socket.connect = lambda self, *a: connects.append(a) or real_connect(self, *a)
import main
heavy = sorted({'.'.join(m.split('.')[:2]) for m in sys.modules
                if m.startswith(('google.cloud.sql', 'google.auth', 'aiohttp', 'grpc'))})
print({"connects": len(connects), "threads": threading.active_count(), "heavy": heavy})
"""


def probe_import(env: dict[str, str]) -> dict:
    return eval(run_python(IMPORT_PROBE, env).strip().splitlines()[-1])  # noqa: S307 - our probe


def test_importing_main_opens_no_connection_starts_no_thread_loads_no_connector(postgres):
    assert probe_import({"DATABASE_URL": postgres.admin_url}) == {
        "connects": 0,
        "threads": 1,
        "heavy": [],
    }


def test_cloud_sql_config_also_imports_nothing_heavy_until_the_first_request():
    env = {"INSTANCE_CONNECTION_NAME": "p:r:i", "DB_NAME": "d", "DB_USER": "u", "DB_PASS": "x"}
    assert probe_import(env) == {"connects": 0, "threads": 1, "heavy": []}


def test_served_by_a_forked_gunicorn_worker(admin, serve):
    seed.seed_users(admin, 20, progress=False)
    served = serve()
    status, body = get(served.base + "/")
    assert status == 200
    users = json.loads(body)["users"]
    assert [u["id"] for u in users] == list(range(1, 21))
    assert users[0]["created_at"] == "2024-01-01T00:01:00+00:00"
    status, body = get(served.base + "/?limit=x")
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"


def test_50_concurrent_requests_never_use_more_than_5_connections(admin, postgres, serve):
    seed.seed_users(admin, 20_000, progress=False)  # ~2 MB per answer: requests overlap
    served = serve(THREADS="16", DB_POOL_TIMEOUT="10")
    with (
        PeakConnections(postgres.admin_url) as connections,
        Load(served.base, clients=50, requests=1, timeout=60) as load,
    ):
        load.join()
    assert [a.status for a in load.answers] == [200] * 50
    assert all(len(json.loads(a.body)["users"]) == 20_000 for a in load.answers[:3])
    figure(f"peak connections from the function under 50 concurrent requests: {connections.peak}")
    assert 2 <= connections.peak <= 5  # it did run requests in parallel, and never past the pool


def test_once_its_status_is_sent_a_listing_is_whole_whatever_the_database_does(admin, serve):
    """The body is read whole before its status (one snapshot, spooled): a table gone while
    the client reads changes nothing it gets. Before, the pages still to come failed, and the
    stream could only be cut."""
    seed.seed_users(admin, 100_000, progress=False)  # ~11 MB: more than socket buffers hold
    served = serve()
    host, port = served.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    head = response.read(1000)
    admin.cursor().execute("ALTER TABLE users RENAME TO users_away")
    body = head + response.read()
    assert len(body) == int(response.getheader("Content-Length"))
    assert len(json.loads(body)["users"]) == 100_000
    conn.close()
    admin.cursor().execute("ALTER TABLE users_away RENAME TO users")
    assert get(served.base + "/?limit=1")[0] == 200  # and the function serves on


def test_importing_main_loads_nothing_beyond_its_dependencies_and_lib(postgres):
    """Cold start: `import main` may cost what functions_framework (with the gunicorn server
    its command imports before serving, whose worker lib/http/health_lane.py patches),
    sqlalchemy and pg8000 cost, plus our own small modules, and nothing more (an argparse
    import would show)."""
    probe = (
        "import sys\n"
        "import functions_framework, functions_framework._http.gunicorn, sqlalchemy, pg8000\n"
        "before = set(sys.modules)\n"
        "import main\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(m for m in new if m != 'main' and m.split('.')[0] != 'lib'))"
    )
    assert run_python(probe, {"DATABASE_URL": postgres.admin_url}).strip() == "[]"
