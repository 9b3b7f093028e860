"""What a client that reads slowly, stalls or leaves costs: a worker thread and at most two
pages of memory, never a database connection between pages."""

from __future__ import annotations

import json
import time

from lib import listing
from tests.conftest import insert_users

ROWS = [(f"u{i}@example.com", f"User {i}", "2024-01-01T00:00:00Z") for i in range(9)]


def in_use_settles(db, seconds: float = 2) -> int:
    """The pool's checked-out count once the helper thread's page is rendered."""
    deadline = time.monotonic() + seconds
    while (in_use := db.pool_state()["in_use"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return in_use


def test_a_stalled_reader_holds_no_connection_between_pages(admin, make_app, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 2)  # five pages of two
    insert_users(admin, ROWS)
    app = make_app(DB_POOL_SIZE="1", DB_POOL_TIMEOUT="0.5")
    main = __import__("sys").modules["main"]
    client = app.test_client()
    stalled = client.get("/", buffered=False)
    chunks = iter(stalled.response)
    first = next(chunks)  # the client read one page, then stops reading
    assert in_use_settles(main.DB) == 0
    # With a pool of one, the stalled reader would make this a 503 if it held the connection.
    paged = client.get("/?limit=3")
    assert paged.status_code == 200 and len(paged.get_json()["users"]) == 3
    body = first + b"".join(chunks)  # the stalled client reads on
    stalled.close()
    assert [u["id"] for u in json.loads(body)["users"]] == list(range(1, 10))
    assert main.DB.pool_state()["in_use"] == 0
