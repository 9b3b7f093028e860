"""What poolers and proxies say, classified by what it means (lib/postgres/pooler_messages.py):
full, slow, cut off from or waking its database is a 503 with Retry-After that says it may
pass, and a connect worth trying again; the pooler's own misconfiguration is a 500 naming the
fix. No driver and no database: the errors are our own (lib/errors.py), as lib/postgres/driver.py
translates the driver's."""

# ruff: noqa: E501 - the messages are quoted whole, one a line

from __future__ import annotations

import socket

import pytest

from lib.errors import ConnectionLost, ServerError
from lib.http.statuses import STATUS
from lib.postgres.diagnosis import classify, may_pass

# (source, SQLSTATE, message); a misconfiguration also names a fragment of its fix.
MAY_PASS = [
    ("pgbouncer", "08P01", "no more connections allowed (max_client_conn)"),
    ("pgbouncer 1.24", "08P01", "client connections exceeded (max_db_client_connections)"),
    ("pgbouncer 1.24", "08P01", "client connections exceeded (max_user_client_connections)"),
    ("pgbouncer", "08P01", "query_wait_timeout"),
    ("pgbouncer 1.17", "08P01", "server login has been failing, try again later (server_login_retry)"),
    ("pgbouncer 1.24", "08P01", "server login has been failing, cached error: connect failed (server_login_retry)"),
    ("pgbouncer 1.24, cut at 128 bytes", "08P01", "server login has been failing, cached error: the database system is starting up (server_lo"),
    ("pgbouncer < 1.17", "08P01", "pgbouncer cannot connect to server"),
    ("pgbouncer < 1.5", "08P01", "no working server connection"),
    ("pgbouncer", "08P01", "client_login_timeout (server down)"),
    ("pgbouncer", "08P01", "client_login_timeout"),
    ("pgbouncer", "08P01", "server conn crashed?"),
    ("pgbouncer", "08P01", "pgbouncer: server conn crashed?"),
    ("libpq, relayed", "08006", "server closed the connection unexpectedly"),
    ("pgbouncer", "08P01", "server shutting down"),
    ("pgbouncer", "08P01", "pooler is shutting down"),
    ("pgbouncer", "08P01", 'database "app" is disabled'),
    ("pgbouncer", "08P01", "bouncer resources exhaustion"),
    ("supavisor", "XX000", "Max client connections reached"),
    ("supavisor", "XX000", "MaxClientsInSessionMode: max clients reached - in Session mode max clients are limited to pool_size"),
    ("supavisor 2026", "XX000", "(EMAXCONN) max client connections reached, limit: 200"),
    ("supavisor 2026", "XX000", "(EMAXCONNSESSION) max clients reached in session mode - max clients are limited to pool_size: 15"),
    ("supavisor", "XX000", "Unable to check out connection from the pool due to timeout"),
    ("supavisor 2026", "XX000", "(ECHECKOUTTIMEOUT) unable to check out connection from the pool after 15000ms in Transaction mode"),
    ("supavisor 2026", "XX000", "(ECHECKOUTRETRIES) failed to check out a connection after multiple retries"),
    ("supavisor", "XX000", "Max pools count reached"),
    ("supavisor", "XX000", "Circuit breaker open: too many failed attempts to connect to the database, new connections are temporarily blocked"),
    ("supavisor", "XX000", "DbHandler exited. Check logs for more information."),
    ("supavisor", "XX000", "Connection to database closed. Check logs for more information"),
    ("supavisor", "XX000", "Failed to subscribe to tenant after multiple retries. Terminating."),
    ("neon", "XX000", "Couldn't connect to compute node"),
    ("neon", "XX000", "Couldn't connect to compute node: server closed the connection unexpectedly"),
    ("neon, to 2025-04", "XX000", "Console request failed"),
    ("neon", "XX000", "Control plane request failed"),
    ("neon", "XX000", "Control plane request failed: endpoint is temporarily unavailable. Check your quotas and/or contact our support."),
    ("neon control plane", "XX000", "endpoint is idle, retry request"),
    ("neon control plane", "XX000", "timed out while waiting for endpoint to become active"),
    ("neon", "XX000", "could not wake compute"),
    ("neon", "XX000", "compute is starting"),
    ("neon", "XX000", "Too many connections to this endpoint. Please try again later."),
    ("neon", "XX000", "Too many connections attempts"),
    ("neon", "XX000", "Failed to acquire permit to connect to the database. Too many database connection attempts are currently ongoing."),
    ("rds proxy", "08P01", "Timed-out waiting to acquire database connection."),
    ("rds proxy", "XX000", "The maximum number of client connections to the proxy exceeded 100."),
    ("rds proxy", "XX000", "Rate of connection to proxy exceeded 50."),
    ("rds proxy", "XX000", "The IAM authentication failed because of too many competing requests."),
]  # fmt: skip

MISCONFIGURED = [
    ("pgbouncer", "08P01", "no such database: app", "[databases]"),
    ("pgbouncer", "08P01", "no such user", "auth_file"),
    ("pgbouncer", "08P01", "no such user: app", "auth_file"),
    ("pgbouncer", "08P01", "password authentication failed", "pooler uses"),
    ("pgbouncer", "08P01", "SASL authentication failed", "auth_type"),
    ("pgbouncer", "08P01", "client selected an invalid SASL authentication mechanism", "auth_type"),
    ("pgbouncer 1.24", "08P01", 'server login has been failing, cached error: password authentication failed for user "app" (server_login_retry)', "pooler uses"),
    ("pgbouncer", "08P01", "server login failed: wrong password type", "pooler uses"),
    ("pgbouncer", "08P01", "login rejected", "auth_hba_file"),
    ("pgbouncer", "08P01", "SSL required", "sslmode=require"),
    ("supavisor", "XX000", "Tenant or user not found", "user.project-ref"),
    ("supavisor 2026", "XX000", "(ENOTFOUND) tenant/user app.abcdefghij not found", "user.project-ref"),
    ("supavisor", "XX000", "Circuit breaker open: too many authentication failures, new connections are temporarily blocked", "pooler uses"),
    ("supavisor", "28P01", 'password authentication failed for user "app"', "pooler uses"),
    ("supavisor", "XX000", "SSL connection is required", "sslmode=require"),
    ("supavisor", "XX000", "Address not in tenant allow_list: {10, 0, 0, 1}", "allow list"),
    ("neon", "XX000", "Endpoint ID is not specified. Either please upgrade the postgres client library (libpq) for SNI support or pass the endpoint ID (first part of the domain name) as a parameter: '?options=endpoint%3D<endpoint-id>'. See more at https://neon.tech/sni", "options=endpoint"),
    ("neon", "XX000", "Console request failed: endpoint cannot be found", "Neon console"),
    ("neon", "XX000", "Control plane request failed: endpoint cannot be found", "Neon console"),
    ("neon", "XX000", "endpoint ep-cool-darkness-123456 not found", "Neon console"),
    ("neon", "XX000", "Control plane request failed: endpoint is disabled", "Neon console"),
    ("neon", "XX000", "password authentication failed for user 'app'", "pooler uses"),
    ("neon", "XX000", "This IP address 192.0.2.1 is not allowed to connect to this endpoint. Please add it to the allowed list in the Neon console.", "allowed IPs"),
    ("rds proxy", "08P01", "This RDS Proxy requires TLS connections.", "sslmode=require"),
    ("rds proxy", "08P01", "IAM authentication is allowed only with SSL connections.", "sslmode=require"),
    ("rds proxy", "28000", "IAM authentication failed for user app. Check the IAM token for this user and try again.", "Secrets Manager"),
    ("rds proxy", "28000", "This RDS proxy has no credentials for the role app. Check the credentials for this role and try again.", "Secrets Manager"),
    ("rds proxy", "28P01", "The password that was provided for the role app is wrong.", "Secrets Manager"),
    ("rds proxy", "08P01", "RDS supports only IAM or MD5 authentication.", "MD5"),
    ("rds proxy", "XX000", 'Request returned an error: database "app" does not exist', "database name"),
    # As before: a refused startup parameter (lib/postgres/session.py falls back), a statement's error.
    ("pgbouncer", "08P01", "unsupported startup parameter: statement_timeout", "DATABASE_URL"),
    ("postgresql", "42703", 'column "query_wait_timeout" does not exist', "served columns"),
]  # fmt: skip


def server_error(code: str, message: str) -> ServerError:
    return ServerError({"S": "FATAL", "C": code, "M": message})


def lost_under_a_statement(code: str, message: str) -> ConnectionLost:
    """As lib/postgres/database.py raises it when the error closed a pooled connection."""
    lost = ConnectionLost("DatabaseError")
    lost.__cause__ = server_error(code, message)
    return lost


@pytest.mark.parametrize(("source", "code", "message"), MAY_PASS)
@pytest.mark.parametrize("when", ["at connect", "under a statement"])
def test_a_pooler_full_slow_or_waking_is_a_503_that_may_pass(source, code, message, when):
    build = server_error if when == "at connect" else lost_under_a_statement
    failure = classify(build(code, message))
    assert (STATUS[failure.code], failure.code, failure.retryable) == (
        503,
        "database_unavailable",
        True,
    )
    assert "may pass" in failure.message
    assert message not in failure.message  # the client is told what it means, not the text


@pytest.mark.parametrize(("source", "code", "message", "fix"), MISCONFIGURED)
def test_a_pooler_misconfiguration_is_a_500_naming_the_fix(source, code, message, fix):
    failure = classify(server_error(code, message))
    assert (STATUS[failure.code], failure.code, failure.retryable) == (
        500,
        "configuration_error",
        False,
    )
    advice = failure.message.split(" (SQLSTATE ")[0]  # then the server's own message, quoted
    assert fix in advice, failure.message


@pytest.mark.parametrize(("source", "code", "message"), MAY_PASS)
def test_a_connect_that_may_pass_is_tried_again(source, code, message):
    assert may_pass(server_error(code, message))


@pytest.mark.parametrize(("source", "code", "message", "fix"), MISCONFIGURED)
def test_a_misconfiguration_is_never_tried_again(source, code, message, fix):
    assert not may_pass(server_error(code, message))


def test_what_else_is_waited_for_and_what_is_down():
    starting = server_error("57P03", "the database system is starting up")
    assert STATUS[classify(starting).code] == 503 and may_pass(starting)
    assert may_pass(server_error("57P03", "the database system is not accepting connections"))
    # Down: nothing there, or no answer in time: a 503 at once until the next attempt is due.
    for down in (
        ConnectionRefusedError(111, "Connection refused"),
        FileNotFoundError(2, "No such file or directory"),  # no Unix socket
        OSError(113, "No route to host"),
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        ConnectionResetError(104, "Connection reset by peer"),
    ):
        assert STATUS[classify(down).code] == 503 and not may_pass(down), down
    assert not may_pass(TimeoutError("timed out"))
    assert not may_pass(server_error("53300", "sorry, too many clients already"))
    assert not may_pass(server_error("28P01", 'password authentication failed for user "u"'))
