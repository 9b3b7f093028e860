"""The checkout hook may refuse pooled connections many times in a row (idle past
DB_IDLE_TIMEOUT, on a lagging standby, on a fallback server): no request ever sees SQLAlchemy's
"This connection is closed", which it raises when the connection it opened after a refusal is
refused too (lib/postgres/database.py `check`)."""

from __future__ import annotations

import time

from sqlalchemy import event

from tests.conftest import insert_users


def test_every_pooled_connection_refused_in_a_row_costs_no_error(admin, make_app):
    insert_users(admin, [("a@example.com", "A", "2024-01-01T00:00:00Z")])
    client = make_app(DB_IDLE_TIMEOUT="0.001").test_client()
    assert client.get("/").status_code == 200
    import main  # the module make_app loaded

    # Logins that take a few milliseconds after the function's own connect listener: each
    # new connection is already past the 1 ms idle timeout when the hook first sees it.
    event.listen(main.DB.engine(), "connect", lambda *_: time.sleep(0.005))
    held = [main.DB.checkout() for _ in range(5)]  # five pooled connections...
    for conn in held:
        main.DB.release(conn)
    time.sleep(0.01)  # ...all idle past DB_IDLE_TIMEOUT: each is refused at its checkout
    for _ in range(20):
        response = client.get("/")
        assert response.status_code == 200, response.get_data(as_text=True)
