"""What poolers and proxies say, read by what it means.

A pooler or proxy in front (PgBouncer, Supavisor, Neon, RDS Proxy) answers with SQLSTATEs of
its own choosing (08P01, XX000) both for what the operator must fix and for what passes by
itself (full, slow, waking its database), so its errors are classified by their message.
lib/postgres/diagnosis.py asks `pooler_rule`; tests/test_pooler_messages.py holds each rule to real
messages from the sources below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lib.errors import ServerError

# A statement's own errors quote identifiers and data: their messages are never read as a
# pooler's (a column named query_wait_timeout is still a missing column).
_STATEMENT_CLASSES = ("22", "23", "42", "P0")

SSLMODE = "the {} requires TLS: set sslmode=require (or stronger) in DATABASE_URL"
LOGIN_REFUSED = (
    "a password was refused: check the user and password in DATABASE_URL (behind a pooler, "
    "also the password the pooler uses for its own server login)"
)


@dataclass(frozen=True)
class PoolerRule:
    """A pooler's or proxy's error message, by what it means: `fix` for a misconfiguration (a
    500 naming what to fix), None for what may pass by itself (full, slow, cut off from or
    waking its database: a 503 with Retry-After, and a connect tried again within
    DB_CONNECT_TIMEOUT). Poolers choose their SQLSTATEs freely, so the message decides.
    Sources of POOLER_RULES, one a line:
    - PgBouncer 1.x, src/client.c, objects.c, janitor.c: its own errors are all 08P01.
    - PgBouncer server_login_retry: "try again later" (1.17-1.23), the cached error (1.24+).
    - PgBouncer before 1.17: "pgbouncer cannot connect to server" (earlier "no working ...").
    - Supavisor lib/supavisor/client_handler/error.ex (to 2025): XX000, plain messages.
    - Supavisor lib/supavisor/errors/*.ex (2026): XX000, "(ECODE) message".
    - Neon proxy/src (auth/mod.rs, compute/mod.rs, control_plane/): XX000 for everything.
    - Neon control plane while a compute wakes: neondatabase/neon#5838, docs "Connection errors".
    - RDS Proxy for PostgreSQL: RDS user guide "Troubleshooting for RDS Proxy" (no SQLSTATEs).
    """

    pattern: str  # a regular expression, searched case-insensitively in the message
    fix: str | None = None


def _rules(*rules: tuple[str, str | None]) -> tuple[PoolerRule, ...]:
    return tuple(PoolerRule(pattern, fix) for pattern, fix in rules)


# What poolers and proxies say, pattern -> class (sources: PoolerRule). The first match wins:
# every misconfiguration comes before the outages, since PgBouncer's server_login_retry error
# may quote a refused password. Only what a pooler itself says is read (pooler_rule).
POOLER_RULES = _rules(
    # --- misconfigurations: a 500 that names the fix ------------------------------------------
    # PgBouncer
    (
        r"no such database",
        "the pooler has no such database: add it to the pooler's [databases] section, or "
        "fix the database name in DATABASE_URL",
    ),
    (
        r"no such user",
        "the pooler does not know the user: add it to the pooler's auth_file (or "
        "auth_query), or fix the user in DATABASE_URL",
    ),
    (r"password authentication failed|wrong password type|server signature", LOGIN_REFUSED),
    (
        r"SASL authentication failed|invalid SASL authentication mechanism|SASL authentication "
        r"mechanisms are supported",
        "SCRAM authentication with the pooler failed: check the password in DATABASE_URL "
        "and the pooler's auth_type/auth_file",
    ),
    (
        r"login rejected",
        "the pooler's auth_hba_file rejects this login: allow the function's user and address",
    ),
    (r"^SSL required$", SSLMODE.format("pooler")),
    # Supavisor
    (
        r"tenant or user not found|tenant/user \S+ not found|no tenant identifier",
        "the pooler (Supavisor) does not know this user or tenant: use the user name of "
        "the provider's pooled connection string (user.project-ref)",
    ),
    (r"too many authentication failures", LOGIN_REFUSED),
    (r"SSL connection is required", SSLMODE.format("pooler")),
    (
        r"address not in tenant allow_list",
        "the pooler refuses the function's address: add its egress IP to the allow list",
    ),
    # Neon
    (
        r"endpoint ID is not specified",
        "the Neon proxy cannot tell which endpoint: connect with TLS (sslmode=require, "
        "which sends the host name as SNI) or add options=endpoint%3D<endpoint-id> to "
        "DATABASE_URL",
    ),
    (
        r"endpoint cannot be found|endpoint \S+ not found|endpoint not found|endpoint is "
        r"disabled",
        "the Neon endpoint does not exist or is disabled: check the host name of "
        "DATABASE_URL and the endpoint in the Neon console",
    ),
    (
        r"not allowed to connect to this endpoint|from a blocked network",
        "the Neon endpoint refuses the function's address: add its egress IP to the allowed IPs",
    ),
    # RDS Proxy
    (
        r"requires TLS connections|IAM (authentication )?is allowed only with SSL",
        SSLMODE.format("proxy"),
    ),
    (
        r"IAM authentication failed for (user|the role)|has no credentials for the role|"
        r"password that was provided for the role|supports only IAM or MD5",
        "RDS Proxy refused the login: check the user and password in DATABASE_URL against "
        "the proxy's Secrets Manager secret (the proxy accepts MD5 or IAM authentication)",
    ),
    (
        r"request returned an error: database .* does not exist",
        "the database does not exist: check the database name",
    ),
    # --- may pass: 503 with Retry-After, and a connect tried again ----------------------------
    # PgBouncer: full, slow, cannot reach its server, restarting
    (r"no more connections allowed \(max_client_conn\)", None),
    (r"client connections exceeded \(max_(db|user)_client_connections\)", None),
    (r"query_wait_timeout", None),
    (r"server login has been failing|server_login_retry", None),
    (r"pgbouncer cannot connect to server|no working server connection", None),
    (r"client_login_timeout", None),
    (r"server conn crashed\?|server closed the connection unexpectedly", None),
    (r"server shutting down|pooler is shutting down|database \S+ is disabled", None),
    (r"bouncer resources exhaustion", None),
    # Supavisor: client limits, pool checkout timeouts, its database connection failing
    (r"max client connections reached|maxclientsinsessionmode|max clients reached", None),
    (r"unable to check out (process|connection) from the pool", None),
    (r"failed to check out a connection|max pools count reached", None),
    (r"circuit breaker open|too many failed attempts to connect to the database", None),
    (r"DbHandler exited|connection to database closed", None),
    (r"failed to subscribe to tenant|proxy supervisor unavailable|failed to start proxy", None),
    # Neon: a compute waking from scale-to-zero, or its control plane busy
    (r"couldn't connect to compute node|(could not|couldn't|failed to) wake", None),
    (r"compute (node )?is starting|endpoint is idle|waiting for endpoint to become active", None),
    (r"(console|control plane) request failed", None),
    (r"too many connections (attempts|to this endpoint)|failed to acquire permit", None),
    # RDS Proxy: its pool, client and rate limits
    (r"timed-out waiting to acquire database connection", None),
    (r"maximum number of client connections to the proxy exceeded", None),
    (r"rate of connection to proxy exceeded|too many competing requests", None),
)
_COMPILED = tuple((re.compile(rule.pattern, re.IGNORECASE), rule) for rule in POOLER_RULES)


def pooler_rule(error: ServerError) -> PoolerRule | None:
    """The first POOLER_RULES entry matching this server error's message, if any (never for
    a statement's error, whose message quotes names and data)."""
    if error.sqlstate.startswith(_STATEMENT_CLASSES):
        return None
    return next((rule for pattern, rule in _COMPILED if pattern.search(error.message)), None)
