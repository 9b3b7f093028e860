"""Structured request logs for Cloud Logging, Server-Timing, and /healthz."""

from __future__ import annotations

import jsonschema
import yaml

from devtools import seed
from lib.http import telemetry
from lib.listing import pages as listing
from tests.conftest import ROOT, free_port, function_connections
from tests.logs import log_lines, request_lines


def test_one_structured_line_per_request_with_trace_and_pool_state(
    admin, make_app, capsys, monkeypatch
):
    seed.seed_users(admin, 7, progress=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-proj")
    client = make_app().test_client()
    capsys.readouterr()
    response = client.get(
        "/?limit=5",
        headers={
            "X-Cloud-Trace-Context": "0af7651916cd43dd8448eb211c80319c/123;o=1",
            "User-Agent": "probe/1",
        },
    )
    [line] = request_lines(capsys.readouterr().out)
    assert line["severity"] == "INFO"
    assert line["httpRequest"]["status"] == 200
    assert line["httpRequest"]["requestUrl"] == "/"  # query values stay out of logs
    assert line["httpRequest"]["userAgent"] == "probe/1"
    assert (
        line["logging.googleapis.com/trace"]
        == "projects/my-proj/traces/0af7651916cd43dd8448eb211c80319c"
    )
    assert line["logging.googleapis.com/spanId"] == f"{123:016x}"
    # A first request: nothing in the cache, so no probe: the columns' check and the render.
    assert (line["rows"], line["queries"], line["bytes"]) == (5, 2, len(response.data))
    assert line["pages"] == 1
    assert line["cache"] == "miss"
    assert (
        line["pool"]["in_use"] == 0 and line["pool"]["idle"] == 1 and line["pool"]["waiting"] == 0
    )
    assert line["pool_wait_ms"] >= 0 and line["query_ms"] > 0
    timing = response.headers["Server-Timing"]
    assert timing.startswith("pool;dur=") and ", db;dur=" in timing
    assert timing.endswith(", cache;desc=miss")
    client.get("/?limit=5")
    [line] = request_lines(capsys.readouterr().out)
    assert (line["queries"], line["cache"]) == (1, "hit")


def test_a_listing_of_pages_logs_each_statement(admin, make_app, capsys, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_ROWS", 4)
    seed.seed_users(admin, 10, progress=False)
    client = make_app().test_client()
    capsys.readouterr()
    body = client.get("/").data
    [line] = request_lines(capsys.readouterr().out)
    # The columns' check, page 1, then BEGIN, its snapshot, pages 2 and 3, COMMIT.
    assert (line["rows"], line["pages"], line["queries"]) == (10, 3, 7)
    assert line["bytes"] == len(body) and "ended" not in line


def test_a_large_body_is_logged_once_sent(admin, make_app, capsys):
    seed.seed_users(admin, 1500, progress=False)  # ~150 KB: sent in 64 KiB slices
    client = make_app().test_client()
    capsys.readouterr()
    response = client.get("/")
    assert response.is_streamed and not request_lines(capsys.readouterr().out)
    body = response.data
    response.close()  # what the WSGI server does after the last byte
    [line] = request_lines(capsys.readouterr().out)
    assert (line["rows"], line["bytes"]) == (1500, len(body))


def test_failures_are_logged_as_warnings_without_secrets(admin, make_app, capsys):
    url = f"postgresql://u:SECRET-77@127.0.0.1:{free_port()}/db?sslmode=disable"
    client = make_app(DATABASE_URL=url, DB_CONNECT_TIMEOUT="1").test_client()
    capsys.readouterr()
    assert (
        client.get("/", headers={"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"}).status_code == 503
    )
    out = capsys.readouterr().out
    [line] = request_lines(out)
    assert line["severity"] == "WARNING" and line["httpRequest"]["status"] == 503
    assert line["logging.googleapis.com/trace"].endswith("a" * 32)
    assert any(entry.get("logger") == "lib.http.render" for entry in log_lines(out))
    assert "SECRET-77" not in out


def test_healthz_reports_the_pool_without_connecting(admin, make_app):
    client = make_app().test_client()
    health = client.get("/healthz").get_json()
    assert health == {
        "status": "ok",
        "pool": {"started": False, "size": 5},
        "database": {
            "transaction_pooler": None,
            "session": None,
            "replicas": {
                "max_lag_s": 30.0,
                "check_interval_s": 1.0,
                "standby_lag_s": {},
                "passed_over": {},
            },
            "state": "unknown",
            "last_ok": None,
            "last_error": None,
            "connects": "unknown",
        },
        "cache": health["cache"],
    }
    assert health["cache"]["enabled"] and health["cache"]["bytes"] == 0
    assert function_connections(admin) == 0
    client.get("/")
    body = client.get("/healthz").get_json()
    assert (body["pool"]["in_use"], body["pool"]["idle"], body["pool"]["waiting"]) == (0, 1, 0)
    # What the first connection read back: the protections hold on a direct connection.
    assert body["database"]["state"] == "ok" and body["database"]["last_error"] is None
    assert body["database"]["connects"] == "ok"
    assert {k: body["database"][k] for k in ("transaction_pooler", "session")} == {
        "transaction_pooler": None,
        "session": {
            "statement_timeout": "10000",
            "idle_in_transaction_session_timeout": "10000",
            "default_transaction_read_only": "on",
        },
    }
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    schema = spec["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
    jsonschema.validate(body, schema["schema"])
    jsonschema.validate(health, schema["schema"])


def test_healthz_answers_while_the_database_is_unreachable(make_app):
    client = make_app(DATABASE_URL=f"postgresql://u:p@127.0.0.1:{free_port()}/db").test_client()
    assert client.get("/").status_code == 503
    assert client.get("/healthz").get_json()["status"] == "ok"


def test_trace_header_parsing():
    assert telemetry.trace_fields({}, None) == {}
    assert telemetry.trace_fields({"X-Cloud-Trace-Context": "nonsense"}, None) == {}
    assert telemetry.trace_fields({"X-Cloud-Trace-Context": "1" * 32}, None) == {
        "logging.googleapis.com/trace": "1" * 32
    }
    assert telemetry.trace_fields({"traceparent": f"00-{'1' * 32}-{'2' * 16}-00"}, None) == {
        "logging.googleapis.com/trace": "1" * 32,
        "logging.googleapis.com/spanId": "2" * 16,
    }


def test_malformed_or_oversized_trace_headers_are_ignored():
    """They come from any client: never an error, never a trace that is not one."""
    trace = "0af7651916cd43dd8448eb211c80319c"
    for header, expected in [
        ({"X-Cloud-Trace-Context": f"{trace}/{'1' * 4301}"}, {}),  # int() refused it: a 500
        # past 64 bits: not a span id, but the trace is still one
        ({"X-Cloud-Trace-Context": f"{trace}/{2**64}"}, {"logging.googleapis.com/trace": trace}),
        ({"X-Cloud-Trace-Context": f"{trace}junk"}, {}),
        ({"X-Cloud-Trace-Context": "0" * 32}, {}),  # all zeros: no trace (W3C)
        ({"X-Cloud-Trace-Context": "%" * 10_000}, {}),
        ({"traceparent": f"00-{trace}-{'b' * 4301}-01"}, {}),
        ({"X-Cloud-Trace-Context": f"{trace}/{2**64 - 1};o=1"}, None),
        ({"X-Cloud-Trace-Context": f"{trace.upper()}/0"}, {"logging.googleapis.com/trace": trace}),
    ]:
        fields = telemetry.trace_fields(header, None)
        if expected is None:
            assert fields["logging.googleapis.com/spanId"] == "f" * 16
        else:
            assert fields == expected, header


def test_server_timing_has_a_phase_for_connects_and_for_waiting_on_another_requests():
    stats = telemetry.Stats(pool_wait_ms=12.0, query_ms=1.5)
    assert telemetry.server_timing(stats) == "pool;dur=12.00, db;dur=1.50"
    stats.connects.connect_ms, stats.connects.wait_ms = 4.0, 7.5
    assert telemetry.server_timing(stats) == (
        "pool;dur=0.50, connect;dur=4.00, connect_wait;dur=7.50, db;dur=1.50"
    )
    failed = telemetry.Stats()  # a checkout that failed adds nothing to pool_wait_ms
    failed.connects.wait_ms = 800.0
    assert telemetry.server_timing(failed) == "pool;dur=0.00, connect_wait;dur=800.00, db;dur=0.00"
