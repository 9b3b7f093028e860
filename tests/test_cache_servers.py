"""The response cache never serves one server's bytes for another's, and never a stale byte
under load: real servers behind one URL, with the same snapshot text over different data.

Each server case drives two servers to the very same `pg_current_snapshot()` text over
different rows, then moves the URL (a relay) from one to the other: only the server
identity in the cache's key (system_identifier, postmaster start time) tells them apart.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import seed
from devtools.devdb import EmbeddedPostgres
from tests.conftest import free_port, insert_users
from tests.pgbouncer import PgBouncer
from tests.relay import Relay
from tests.test_connect_url import world_dir

pytestmark = pytest.mark.slow

MAX_XIDS = 20_000  # bound on the xids spent to bring two servers to the same snapshot


def snapshot(url: str) -> str:
    conn = seed.connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT pg_current_snapshot()::text")
        return cursor.fetchone()[0]
    finally:
        conn.close()


def spend_xids(url: str, count: int) -> None:
    """Commit `count` transactions that each take an xid and write nothing."""
    conn = seed.connect(url)
    try:
        cursor = conn.cursor()
        for _ in range(count):
            cursor.execute("SELECT pg_current_xact_id()")
    finally:
        conn.close()


def same_snapshot(a: str, b: str) -> str:
    """Spend xids on the server behind, until both idle servers show the same snapshot."""
    xmax_a, xmax_b = (int(snapshot(url).split(":")[1]) for url in (a, b))
    assert abs(xmax_a - xmax_b) < MAX_XIDS
    spend_xids(b if xmax_a > xmax_b else a, abs(xmax_a - xmax_b))
    text = snapshot(a)
    assert text == snapshot(b) and text.endswith(":")  # idle: xmin == xmax, no xip
    return text


def users(url: str, *emails: str) -> None:
    conn = seed.connect(url)
    try:
        insert_users(conn, [(e, e.split("@")[0], "2024-01-01T00:00:00Z") for e in emails])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def directory():
    path = world_dir("pgcache")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def relay() -> Iterator[Relay]:
    one = Relay(("127.0.0.1", 1))
    yield one
    one.close()


def point(relay: Relay, server: EmbeddedPostgres) -> None:
    """Move the URL to `server`: connections through the relay so far are cut."""
    relay.upstream = ("127.0.0.1", server.port)
    relay.set("reset")
    relay.set("pass")


def fresh_cluster(directory, name: str) -> EmbeddedPostgres:
    server = EmbeddedPostgres(directory / name).start()
    conn = seed.connect(server.url())
    seed.create_schema(conn)
    conn.close()
    return server


def served(client, path: str = "/?limit=10", **headers: str) -> tuple[int, list[str], str]:
    response = client.get(path, headers=headers)
    emails = (
        [u["email"] for u in response.get_json()["users"]] if response.status_code == 200 else []
    )
    cache = response.headers["Server-Timing"].rsplit("cache;desc=", 1)[1]
    return response.status_code, emails, cache


def through(relay: Relay) -> str:
    return f"postgresql://postgres:postgres@127.0.0.1:{relay.port}/postgres?sslmode=disable"


def test_a_second_server_behind_the_same_url_is_never_served_the_firsts_bytes(
    directory, relay, make_app
):
    first, second = fresh_cluster(directory, "first"), fresh_cluster(directory, "second")
    try:
        users(first.url(), "first@a.example")
        users(second.url(), "second@b.example")
        same_snapshot(first.url(), second.url())
        point(relay, first)
        client = make_app(DATABASE_URL=through(relay)).test_client()
        assert served(client)[1:] == (["first@a.example"], "miss")
        tag = client.get("/?limit=10").headers["ETag"]
        assert served(client)[1:] == (["first@a.example"], "hit")
        point(relay, second)
        assert served(client)[1:] == (["second@b.example"], "miss")
        assert served(client, **{"If-None-Match": tag})[0] == 200
    finally:
        first.stop("immediate")
        second.stop("immediate")


def test_a_promoted_replica_written_differently_is_never_served_the_primarys_bytes(
    directory, relay, make_app
):
    primary = fresh_cluster(directory, "primary")
    standby = primary.standby(directory / "standby")
    standby.port = free_port()
    standby.start()
    try:
        users(primary.url(), "both@x.example")
        deadline = time.monotonic() + 30
        while "both" not in json.dumps(_rows(standby.url())) and time.monotonic() < deadline:
            time.sleep(0.1)
        standby._run("pg_ctl", "-D", str(standby.datadir), "-w", "promote")
        users(primary.url(), "only-primary@x.example")
        users(standby.url(), "only-promoted@x.example")
        same_snapshot(primary.url(), standby.url())
        point(relay, primary)
        client = make_app(DATABASE_URL=through(relay)).test_client()
        served(client)
        assert served(client)[1:] == (["both@x.example", "only-primary@x.example"], "hit")
        point(relay, standby)
        assert served(client)[1:] == (["both@x.example", "only-promoted@x.example"], "miss")
    finally:
        standby.stop("immediate")
        primary.stop("immediate")


def test_a_restart_from_a_restored_backup_is_never_served_the_old_lifes_bytes(
    directory, relay, make_app
):
    """A server restored from a file copy and written differently reaches the snapshot text
    it had before, over other rows: only its new start time tells the two lives apart."""
    server = fresh_cluster(directory, "restored")
    try:
        users(server.url(), "kept@x.example")
        server.stop()
        copy(server.datadir, directory / "backup")
        server.start()
        users(server.url(), "lost@x.example")
        before = snapshot(server.url())
        point(relay, server)
        client = make_app(DATABASE_URL=through(relay)).test_client()
        served(client)
        tag = client.get("/?limit=10").headers["ETag"]
        assert served(client)[1:] == (["kept@x.example", "lost@x.example"], "hit")
        server.stop("immediate")
        shutil.rmtree(server.datadir)
        copy(directory / "backup", server.datadir)
        server.start()
        users(server.url(), "other@x.example")
        spend_xids(
            server.url(), int(before.split(":")[1]) - int(snapshot(server.url()).split(":")[1])
        )
        assert snapshot(server.url()) == before
        point(relay, server)
        status, emails, cache = served(client, **{"If-None-Match": tag})
        assert (status, emails, cache) == (200, ["kept@x.example", "other@x.example"], "miss")
    finally:
        server.stop("immediate")


def copy(source: Path, target: Path) -> None:
    """A file-level copy of a stopped cluster, owners kept (its server may run as nobody)."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def _rows(url: str) -> list:
    conn = seed.connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT email FROM users ORDER BY id")
        return cursor.fetchall()
    finally:
        conn.close()


def test_under_concurrent_readers_a_committed_write_shows_on_the_very_next_request(admin, serve):
    """Readers keep the cache hot while, hundreds of times, a write commits and the very
    next request must show it, raw and gzip, through the real server."""
    seed.seed_users(admin, 50, progress=False)
    function = serve()
    url = f"{function.base}/?limit=1000"
    stop, errors = threading.Event(), []

    def read(headers: dict[str, str]) -> None:
        last = 0
        while not stop.is_set():
            request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                body = response.read()
            if headers:
                body = gzip.decompress(body)
            count = len(json.loads(body)["users"])
            if count < last:  # rows are only added: a reader never goes back in time
                errors.append((last, count))
            last = count

    readers = [threading.Thread(target=read, args=(h,)) for h in ({}, {"Accept-Encoding": "gzip"})]
    for reader in readers:
        reader.start()
    cursor = admin.cursor()
    deadline, iterations = time.monotonic() + 60, 0
    try:
        while iterations < 300 and time.monotonic() < deadline:
            email = f"w{iterations}@x.example"
            cursor.execute(
                "INSERT INTO users (email, name, created_at) VALUES (%s, 'w', now())", (email,)
            )
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
                users = json.loads(response.read())["users"]
            assert users[-1]["email"] == email, iterations
            iterations += 1
    finally:
        stop.set()
        for reader in readers:
            reader.join(10)
    assert iterations >= 100 and not errors
    log = function.output()
    assert '"cache":"hit"' in log  # the readers were served from the cache meanwhile


def test_behind_a_transaction_pooler_another_server_is_another_key(directory, relay, make_app):
    """The function's connection to PgBouncer outlives the server behind it: the identity
    comes with every probe, so a new server is a new key."""
    first, second = fresh_cluster(directory, "pooled1"), fresh_cluster(directory, "pooled2")
    try:
        users(first.url(), "first@a.example")
        users(second.url(), "second@b.example")
        same_snapshot(first.url(), second.url())
        point(relay, first)
        with PgBouncer(relay.port, "postgres", "postgres", pool_mode="transaction") as bouncer:
            client = make_app(DATABASE_URL=bouncer.url("pgbouncer=true")).test_client()
            assert served(client)[1:] == (["first@a.example"], "miss")
            assert served(client)[1:] == (["first@a.example"], "hit")
            assert client.get("/healthz").get_json()["database"]["transaction_pooler"]
            point(relay, second)
            answers = [served(client) for _ in range(5)]
        ok = [a for a in answers if a[0] == 200]  # PgBouncer may report its cut connection once
        assert ok and ok[0][1:] == (["second@b.example"], "miss")
        assert all(a[1] == ["second@b.example"] for a in ok)
    finally:
        first.stop("immediate")
        second.stop("immediate")
