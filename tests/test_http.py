"""The HTTP contract, through the real functions-framework app and a real PostgreSQL."""

from __future__ import annotations

import gzip
import json
import logging
import time

import pytest

from devtools import seed
from devtools.devdb import free_port
from lib.listing import pages as listing
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


def test_a_column_dropped_after_the_check_is_a_configuration_error_naming_the_setting(
    admin, make_app
):
    admin.cursor().execute("ALTER TABLE users ADD COLUMN nickname text")
    insert_users(admin, ROWS[:1])
    client = make_app(USERS_COLUMNS="id,nickname").test_client()
    assert client.get("/").status_code == 200  # the columns are checked once per process
    admin.cursor().execute("ALTER TABLE users DROP COLUMN nickname")
    response = client.get("/")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "configuration_error"
    assert error["message"].startswith("USERS_COLUMNS: ") and "nickname" in error["message"]


def test_missing_table_is_a_configuration_error(admin, make_app):
    admin.cursor().execute("DROP TABLE users")
    response = make_app().test_client().get("/")
    assert response.status_code == 500
    assert "table 'users' does not exist" in response.get_json()["error"]["message"]


def test_many_pages_stream_as_one_document(admin, make_app, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 7)
    rows = [(f"u{i}@example.com", f"User {i}", "2024-01-01T00:00:00Z") for i in range(50)]
    insert_users(admin, rows)
    client = make_app().test_client()
    response = client.get("/")
    assert response.is_streamed
    assert [u["email"] for u in response.get_json()["users"]] == [r[0] for r in rows]
    assert function_connections(admin) <= 1


def test_streamed_response_returns_its_connection_even_when_unread(admin, make_app, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 2)
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
    second = client.get(body["next"]).get_json()
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


def test_an_unknown_parameter_is_a_400_that_says_why(make_app):
    """A misspelt `limit` ignored would send the whole table: the message says so."""
    error = make_app().test_client().get("/?foo=bar").get_json()["error"]
    assert error["message"] == (
        "unknown query parameter 'foo'; allowed: limit, cursor "
        "(a misspelt limit must not send every row)"
    )


def test_unreachable_database_is_a_503_within_the_connect_timeout(admin, make_app, caplog):
    """A refused connection may be a database still starting: retried within
    DB_CONNECT_TIMEOUT (tests/test_waking.py), then a 503 the client may retry."""
    url = f"postgresql://u:p@127.0.0.1:{free_port()}/db?sslmode=disable"
    client = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT="0.5").test_client()
    started = time.monotonic()
    response = client.get("/")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "database_unavailable"


def test_a_refused_connection_names_its_target_in_the_log_and_healthz_only(make_app, capsys):
    """Like a wrong password or an unknown host, a closed port says what to check, to the
    operator (log, /healthz); the client's body says no more than before."""
    port = free_port()
    url = f"postgresql://u:p@127.0.0.1:{port}/db?sslmode=disable"
    client = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT="0.3").test_client()
    response = client.get("/")
    target = f"nothing listening on 127.0.0.1:{port}"
    assert response.status_code == 503
    assert response.get_json()["error"]["message"] == "The database is unavailable; retry shortly."
    assert str(port) not in response.get_data(as_text=True)
    [logged] = [line for line in capsys.readouterr().out.splitlines() if "Errno 111" in line]
    assert target in json.loads(logged)["message"]
    assert target in client.get("/healthz").get_json()["database"]["last_error"]["detail"]


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


# --- Routes, hostile input, compression and caching (issue 10) ---------------------------


@pytest.mark.parametrize(
    "path", ["/users", "/nope", "/healthz/", "/%2e%2e/", "/robots.txt", "/" + "x" * 100_000]
)
def test_any_other_path_is_a_404_that_never_touches_the_database(admin, make_app, path):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    for method in ("GET", "HEAD", "POST"):
        response = client.open(path, method=method)
        assert response.status_code == 404, (path, method)
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        if method != "HEAD":
            assert response.get_json()["error"]["code"] == "not_found"
            assert len(response.data) < 200  # the path is not echoed back
    import main

    assert main.DB.pool_state() == {"started": False, "size": 5}  # no engine, no connection
    assert function_connections(admin) == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "TRACE", "OPTIONS"])
def test_healthz_answers_get_and_head_only(make_app, method):
    client = make_app().test_client()
    assert client.get("/healthz").status_code == 200
    head = client.head("/healthz")
    assert head.status_code == 200 and head.data == b""
    response = client.open("/healthz", method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.get_json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B3",  # "³": str.isdigit() says yes, int() says no
        "limit=%D9%A3",  # "٣": int() reads it as 3
        "limit=%EF%BC%93",  # a fullwidth 3
        "limit=" + "1" * 5000,  # past int()'s 4,300-digit limit
        "limit=00000000000000000000000000000001",
        "limit=5&limit=6",
        "cursor=" + "A" * 5000,
        "cursor=%D9%A3%D9%A3%D9%A3%D9%A3",
        "cursor=aWQ6M",  # base64 with impossible padding
        "cursor=aWQ6" + "MTEx" * 10,  # "id:" and 30 digits
    ],
)
def test_hostile_limits_and_cursors_are_400_never_500_never_accepted(admin, make_app, query):
    insert_users(admin, ROWS)
    response = make_app().test_client().get("/?" + query)
    assert response.status_code == 400, response.data[:200]
    assert response.get_json()["error"]["code"] == "bad_request"


def test_an_8_mb_parameter_name_is_not_echoed_back(admin, make_app):
    name = "n" * 8_000_000
    response = make_app().test_client().get(f"/?{name}=1")
    assert response.status_code == 400
    assert len(response.data) < 300  # the 40-character excerpt and why unknown ones are refused
    assert "'nnnnnnnnnn" in response.get_json()["error"]["message"]  # a bounded excerpt


@pytest.mark.parametrize(
    "header",
    [
        {"X-Cloud-Trace-Context": "0af7651916cd43dd8448eb211c80319c/" + "1" * 4301},
        {"X-Cloud-Trace-Context": "0af7651916cd43dd8448eb211c80319c/99999999999999999999999"},
        {"X-Cloud-Trace-Context": "%" * 8000},
        {"traceparent": "00-" + "a" * 32 + "-" + "b" * 4301 + "-01"},
    ],
)
def test_malformed_trace_headers_are_ignored_and_the_request_still_logged(
    admin, make_app, capsys, header
):
    client = make_app().test_client()
    capsys.readouterr()
    for path in ("/healthz", "/", "/nope"):
        response = client.get(path, headers=header)
        assert response.status_code in (200, 404)
        assert response.headers["Content-Type"] == "application/json"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    requests = [line for line in lines if "httpRequest" in line]
    assert len(requests) == 3
    assert all("logging.googleapis.com/trace" not in line for line in requests)


def gzip_client_get(client, path, accept="gzip", **headers):
    return client.get(path, headers={"Accept-Encoding": accept, **headers})


def test_listings_are_gzipped_when_the_client_accepts_it(admin, make_app):
    seed.seed_users(admin, 300, progress=False)
    client = make_app().test_client()
    plain = client.get("/?limit=200")
    assert "Content-Encoding" not in plain.headers  # no Accept-Encoding: identity
    for accept in ("gzip", "br;q=1, gzip;q=0.5", "*", "gzip, identity;q=0", "x-gzip"):
        packed = gzip_client_get(client, "/?limit=200", accept)
        assert packed.headers["Content-Encoding"] == "gzip", accept
        assert packed.headers["Vary"] == "Accept-Encoding"
        assert int(packed.headers["Content-Length"]) == len(packed.data) < len(plain.data) / 3
        assert gzip.decompress(packed.data) == plain.data
    for accept in ("gzip;q=0", "identity", "br", "", "*;q=0, identity", "gzip;q=0.5, identity"):
        response = gzip_client_get(client, "/?limit=200", accept)
        assert "Content-Encoding" not in response.headers, accept
        assert response.data == plain.data
        assert response.headers["Vary"] == "Accept-Encoding"


def test_small_bodies_stay_identity_unless_identity_is_refused(admin, make_app):
    insert_users(admin, ROWS[:1])
    client = make_app().test_client()
    small = gzip_client_get(client, "/")
    assert "Content-Encoding" not in small.headers and small.get_json()["users"]
    forced = gzip_client_get(client, "/", "gzip, identity;q=0")
    assert forced.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(forced.data) == small.data


def test_a_listing_of_many_pages_is_gzipped_whole_with_its_length(admin, make_app, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 40)
    seed.seed_users(admin, 2000, progress=False)  # 50 pages, more than one 64 KiB slice
    client = make_app().test_client()
    plain = client.get("/")
    response = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) == len(response.data)
    assert int(plain.headers["Content-Length"]) == len(plain.data) > 64 * 1024
    assert gzip.decompress(response.data) == plain.data
    assert response.headers["ETag"] != plain.headers["ETag"]  # two representations
    assert not response.headers["ETag"].startswith("W/")  # one snapshot: strong
    assert client.get("/", headers={"If-None-Match": "*"}).status_code == 304  # any exists


def test_whole_listings_carry_a_strong_etag_and_answer_304(admin, make_app):
    seed.seed_users(admin, 50, progress=False)
    client = make_app().test_client()
    plain = client.get("/")
    packed = gzip_client_get(client, "/")
    assert plain.headers["Cache-Control"] == "private, no-cache"
    tag, gz_tag = plain.headers["ETag"], packed.headers["ETag"]
    assert tag.startswith('"') and not tag.startswith("W/")  # strong
    assert tag != gz_tag  # two representations, two tags
    for match in (tag, f"W/{tag}", f'"x", {tag}', "*"):
        response = client.get("/", headers={"If-None-Match": match})
        assert response.status_code == 304, match
        assert response.data == b""
        assert response.headers["ETag"] == tag
        assert response.headers["Cache-Control"] == "private, no-cache"
    assert gzip_client_get(client, "/", **{"If-None-Match": gz_tag}).status_code == 304
    assert client.get("/", headers={"If-None-Match": gz_tag}).status_code == 200
    insert_users(admin, ROWS[:1])
    assert client.get("/", headers={"If-None-Match": tag}).status_code == 200  # changed
    page = client.get("/?limit=10")
    assert (
        client.get("/?limit=10", headers={"If-None-Match": page.headers["ETag"]}).status_code == 304
    )


def test_head_has_the_headers_of_get(admin, make_app):
    seed.seed_users(admin, 50, progress=False)
    client = make_app().test_client()
    for path in ("/", "/?limit=5", "/healthz"):
        for accept in ("gzip", "identity"):
            get = gzip_client_get(client, path, accept)
            head = client.head(path, headers={"Accept-Encoding": accept})
            assert head.data == b""
            for name in (
                "Content-Type",
                "Content-Length",
                "Content-Encoding",
                "ETag",
                "Vary",
                "Cache-Control",
                "Link",
            ):
                assert head.headers.get(name) == get.headers.get(name), (path, accept, name)


def test_errors_are_never_cached(admin, make_app):
    client = make_app().test_client()
    for response in (client.get("/?limit=0"), client.post("/"), client.get("/x")):
        assert response.headers["Cache-Control"] == "no-store"
    assert client.get("/healthz").headers["Cache-Control"] == "no-store"


def test_next_links_are_absolute_from_host_and_forwarded_proto(admin, make_app):
    insert_users(admin, ROWS)
    client = make_app().test_client()
    behind = {"Host": "users-abc.a.run.app", "X-Forwarded-Proto": "https"}
    response = client.get("/?limit=2", headers=behind)
    link = response.get_json()["next"]
    assert link.startswith("https://users-abc.a.run.app/?limit=2&cursor=")
    assert response.headers["Link"] == f'<{link}>; rel="next"'
    plain = client.get(
        "/?limit=2", headers={"Host": "127.0.0.1:8080", "X-Forwarded-Proto": "gopher"}
    )
    assert plain.get_json()["next"].startswith("http://127.0.0.1:8080/?limit=2&cursor=")
    v6 = client.get("/?limit=2", headers={"Host": "[::1]:8080"}).get_json()["next"]
    assert v6.startswith("http://[::1]:8080/?")
    for host in ("evil.com/x?", "a b", "evil.com@x", "x" * 300, "<script>"):
        refused = client.get("/?limit=2", headers={"Host": host})
        assert refused.status_code == 400, host  # ours, or werkzeug's own check first
        assert refused.get_json()["error"]["code"] == "bad_request"


def test_healthz_stays_200_and_reports_the_databases_last_known_state(admin, make_app):
    down = f"postgresql://fn:s3cret-pw@127.0.0.1:{free_port()}/app?connect_timeout=1"
    client = make_app(DATABASE_URL=down, DB_CONNECT_TIMEOUT="1").test_client()
    assert client.get("/healthz").get_json()["database"]["state"] == "unknown"
    assert client.get("/?limit=1").status_code == 503
    health = client.get("/healthz")
    assert health.status_code == 200  # liveness: an outage is no reason to restart
    database = health.get_json()["database"]
    assert database["state"] == "failing" and database["last_ok"] is None
    assert database["last_error"]["code"] == "database_unavailable"
    assert "s3cret-pw" not in health.get_data(as_text=True)
    client = make_app().test_client()
    assert client.get("/?limit=1").status_code == 200
    database = client.get("/healthz").get_json()["database"]
    assert database["state"] == "ok" and database["last_ok"] and database["last_error"] is None
