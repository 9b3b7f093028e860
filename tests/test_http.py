"""The HTTP contract, through the real functions-framework app and a real PostgreSQL."""

from __future__ import annotations

import json
import logging
import time

import pytest

from devtools.devdb import free_port
from lib import users_query
from tests.conftest import (
    function_connections,
    insert_users,
    slow_users,
    terminate_function_connections,
)

ROWS = [
    ("ada@example.com", "Ada Lovelace", "2024-01-01T00:01:00+00:00"),
    ("zoe@example.com", "Zoë Ωmega 山田", "2024-02-29T23:59:59.123456+00:00"),
    ("jose@example.com", 'José "quoted" \\ back', "2023-12-31T22:00:00-02:00"),
]


def ordered(body: bytes) -> list[list[tuple[str, object]]]:
    """Users as lists of (key, value) pairs: checks key order, not only content."""
    return [list(user.items()) for user in json.loads(body, object_pairs_hook=dict)["users"]]


def test_get_returns_every_user_in_id_order_with_iso_timestamps(admin, make_app):
    insert_users(admin, ROWS)
    response = make_app().test_client().get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert ordered(response.data) == [
        [
            ("id", 1),
            ("email", "ada@example.com"),
            ("name", "Ada Lovelace"),
            ("created_at", "2024-01-01T00:01:00+00:00"),
        ],
        [
            ("id", 2),
            ("email", "zoe@example.com"),
            ("name", "Zoë Ωmega 山田"),
            ("created_at", "2024-02-29T23:59:59.123456+00:00"),
        ],
        [
            ("id", 3),
            ("email", "jose@example.com"),
            ("name", 'José "quoted" \\ back'),
            ("created_at", "2024-01-01T00:00:00+00:00"),
        ],
    ]
    assert "GMT" not in response.get_data(as_text=True)  # not Flask's RFC 822 dates


def test_empty_table_is_an_empty_list(admin, make_app):
    response = make_app().test_client().get("/")
    assert response.status_code == 200
    assert response.get_json() == {"users": []}


def test_head_answers_like_get_without_a_body(admin, make_app):
    insert_users(admin, ROWS)
    response = make_app().test_client().head("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.data == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_other_methods_get_405_with_allow(admin, make_app, method):
    response = make_app().test_client().open("/", method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_users_columns_choose_keys_and_their_order(admin, make_app):
    insert_users(admin, ROWS[:1])
    response = make_app(USERS_COLUMNS="name,email").test_client().get("/")
    assert ordered(response.data) == [[("name", "Ada Lovelace"), ("email", "ada@example.com")]]


def test_columns_not_in_the_allow_list_are_never_served(admin, make_app):
    admin.cursor().execute("ALTER TABLE users ADD COLUMN password_hash text DEFAULT 'secret-hash'")
    insert_users(admin, ROWS[:1])
    body = make_app().test_client().get("/").get_data(as_text=True)
    assert "secret-hash" not in body and "password_hash" not in body


def test_unknown_column_is_a_configuration_error_naming_it(admin, make_app, caplog):
    response = make_app(USERS_COLUMNS="id,email,nickname").test_client().get("/")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "configuration_error"
    assert "USERS_COLUMNS" in error["message"] and "'nickname'" in error["message"]


def test_missing_table_is_a_configuration_error(admin, make_app):
    admin.cursor().execute("DROP TABLE users")
    response = make_app().test_client().get("/")
    assert response.status_code == 500
    assert "table 'users' does not exist" in response.get_json()["error"]["message"]


def test_many_pages_stream_as_one_document(admin, make_app, monkeypatch):
    monkeypatch.setattr(users_query, "PAGE_ROWS", 7)
    rows = [(f"u{i}@example.com", f"User {i}", "2024-01-01T00:00:00Z") for i in range(50)]
    insert_users(admin, rows)
    client = make_app().test_client()
    response = client.get("/")
    assert response.is_streamed
    assert [u["email"] for u in response.get_json()["users"]] == [r[0] for r in rows]
    assert function_connections(admin) <= 1


def test_streamed_response_returns_its_connection_even_when_unread(admin, make_app, monkeypatch):
    monkeypatch.setattr(users_query, "PAGE_ROWS", 2)
    insert_users(admin, ROWS)
    app = make_app(DB_POOL_SIZE="1", DB_POOL_TIMEOUT="0.5")
    client = app.test_client()
    for _ in range(3):  # with a pool of one, a leaked connection would make the next one 503
        response = client.head("/")
        assert response.status_code == 200
        response.close()  # what every WSGI server does after sending the (empty) body
        response = client.get("/", buffered=False)
        assert response.status_code == 200
        response.close()  # the client went away before reading the body
    assert client.get("/").status_code == 200


def test_limit_and_cursor_page_through_users(admin, make_app):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    first = client.get("/?limit=2")
    body = first.get_json()
    assert [u["id"] for u in body["users"]] == [1, 2]
    assert first.headers["Link"] == f'<{body["next"]}>; rel="next"'
    second = client.get("/" + body["next"]).get_json()
    assert [u["id"] for u in second["users"]] == [3]
    assert second["next"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=1001",
        "limit=abc",
        "limit=1.5",
        "cursor=bogus",
        "cursor=' OR 1=1 --",
        "limit=1;DROP TABLE users",
        "lmit=5",
        "cursor=aWQ6LTE",
    ],
)
def test_bad_parameters_are_400_json(admin, make_app, query):
    insert_users(admin, ROWS)
    response = make_app().test_client().get("/?" + query)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"
    cursor = admin.cursor()
    cursor.execute("SELECT count(*) FROM users")
    assert cursor.fetchone()[0] == 3  # injection strings were inert


def test_unreachable_database_is_a_fast_503(admin, make_app, caplog):
    url = f"postgresql://u:p@127.0.0.1:{free_port()}/db?sslmode=disable"
    client = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT="2").test_client()
    started = time.monotonic()
    response = client.get("/")
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "database_unavailable"


def test_statement_timeout_is_504_and_the_connection_stays_usable(admin, make_app):
    slow_users(admin, "(SELECT pg_sleep(CASE WHEN r.email = 'slow@example.com' THEN 2 ELSE 0 END))")
    cursor = admin.cursor()
    cursor.execute("INSERT INTO real_users (email, name) VALUES ('slow@example.com', 'S')")
    client = make_app(DB_STATEMENT_TIMEOUT_MS="200", DB_POOL_SIZE="1").test_client()
    started = time.monotonic()
    response = client.get("/")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "statement_timeout"
    cursor.execute("DELETE FROM real_users")
    assert client.get("/").get_json() == {"users": []}  # same single connection, healthy


def test_exhausted_pool_is_a_fast_503(admin, make_app):
    app = make_app(DB_POOL_SIZE="1", DB_POOL_TIMEOUT="0.3")
    client = app.test_client()
    assert client.get("/").status_code == 200
    import main

    with main.DB.engine().connect():  # hold the only connection
        started = time.monotonic()
        response = client.get("/")
        assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "pool_exhausted"
    assert client.get("/").status_code == 200


def test_connections_killed_by_the_server_are_replaced_without_an_error(admin, make_app):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    assert client.get("/").status_code == 200
    for _ in range(3):  # pg8000 reports the first and later kills differently
        assert terminate_function_connections(admin) == 1
        response = client.get("/")
        assert response.status_code == 200
        assert len(response.get_json()["users"]) == 3


def test_the_function_session_is_read_only(admin, make_app):
    from sqlalchemy.exc import DBAPIError

    make_app().test_client().get("/")
    import main

    with main.DB.engine().connect() as conn, pytest.raises(DBAPIError, match="read-only"):
        conn.exec_driver_sql("INSERT INTO users (email, name) VALUES ('x@example.com', 'x')")


def test_session_settings_are_set_on_each_connection(admin, make_app):
    make_app(DB_STATEMENT_TIMEOUT_MS="1234").test_client().get("/")
    import main

    with main.DB.engine().connect() as conn:
        settings = conn.exec_driver_sql(
            "SELECT current_setting('application_name'), current_setting('statement_timeout'), "
            "current_setting('idle_in_transaction_session_timeout'), "
            "current_setting('default_transaction_read_only'), current_setting('TimeZone')"
        ).one()
    assert tuple(settings) == ("users-function", "1234ms", "1234ms", "on", "UTC")


def test_a_wrong_password_is_a_configuration_error_without_a_traceback(
    admin, postgres, make_app, capsys
):
    response = make_app(DATABASE_URL=postgres.url("postgres", "wrong")).test_client().get("/")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "configuration_error"
    out = capsys.readouterr().out
    assert "28P01" in out and "Traceback" not in out


def test_a_password_never_appears_in_responses_or_logs(admin, postgres, make_app, caplog, capsys):
    marker = "S3CRET-MARKER-4d1f"
    admin.cursor().execute(f"CREATE ROLE marker_user LOGIN PASSWORD '{marker}-right'")
    caplog.set_level(logging.DEBUG)
    seen = []
    for url in (
        postgres.url("marker_user", f"{marker}-wrong"),  # authentication fails
        f"postgresql://marker_user:{marker}@127.0.0.1:{free_port()}/postgres?sslmode=disable",
    ):
        response = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT="2").test_client().get("/")
        assert response.status_code in (500, 503)
        seen.append(response.get_data(as_text=True) + str(response.headers))
    out = capsys.readouterr()
    seen += [caplog.text, out.out, out.err]
    assert all(marker not in text for text in seen)
    admin.cursor().execute("DROP ROLE marker_user")
