"""Every response is one moment of the table, while the table is written.

A writer moves a marker between the first and the last user of a range, in one statement
each time, so that every committed state holds exactly one user named TOKEN. A response that
shows 0 or 2 shows a state the table never had. Before, a full listing read each page in a
statement of its own and showed such states."""

from __future__ import annotations

import threading
import time

import pytest

from devtools import seed

USERS = 100_000
MOVE = (
    "UPDATE users SET name = CASE WHEN name = 'TOKEN' THEN 'User' ELSE 'TOKEN' END "
    "WHERE id IN ({first}, {last})"
)


class Writer:
    """Moves the marker every ~5 ms until stopped (at most `seconds`), counting its moves."""

    def __init__(self, postgres, first: int, last: int, seconds: float = 120) -> None:
        self.conn = seed.connect(postgres.admin_url)
        self.first, self.seconds, self.moves = first, seconds, 0
        self.sql = MOVE.format(first=first, last=last)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        cursor = self.conn.cursor()
        cursor.execute("UPDATE users SET name = 'User' WHERE name = 'TOKEN'")
        cursor.execute(f"UPDATE users SET name = 'TOKEN' WHERE id = {self.first}")
        self.thread.start()
        return self

    def _run(self) -> None:
        cursor, deadline = self.conn.cursor(), time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            cursor.execute(self.sql)
            self.moves += 1
            self.stop.wait(0.005)

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()


@pytest.fixture
def many_users(admin):
    seed.seed_users(admin, USERS, progress=False)


@pytest.mark.slow
def test_every_full_listing_of_100000_users_is_one_committed_state(postgres, many_users, make_app):
    client = make_app(RESPONSE_CACHE="off").test_client()
    with Writer(postgres, 1, USERS) as writer:
        tokens = []
        for _ in range(10):
            body = client.get("/").get_data()
            assert body.endswith(b"]}") and body.count(b'"id":') == USERS
            tokens.append(body.count(b'"TOKEN"'))
    assert writer.moves > 100  # the table was written all along
    assert tokens == [1] * 10


@pytest.mark.slow
def test_every_page_of_a_walk_is_one_committed_state(postgres, many_users, make_app):
    """`?limit=` pages (1,000 at most, MAX_LIMIT) each one statement: one state each, with
    the marker moving between the page's first and last user."""
    client = make_app().test_client()
    with Writer(postgres, 1, 1000) as writer:
        tokens = [client.get("/?limit=1000").get_data().count(b'"TOKEN"') for _ in range(30)]
    assert writer.moves > 10
    assert tokens == [1] * 30
