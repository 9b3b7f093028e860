"""Connecting through DATABASE_URL, with libpq's rules on top of pg8000.

pg8000 dials one host and takes any authentication the server proposes. libpq, whose URLs
users paste, tries a list of hosts in order, each within connect_timeout, keeps the first
that matches target_session_attrs, refuses a server that will not do channel binding when
asked to, and tunes TCP keepalives. This module does those things, then hands the driver
(lib/postgres/driver.py) the open socket.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable
from typing import Any

from lib.database_url.lexer import wire
from lib.database_url.uri import DatabaseUrl, Host, Keepalives
from lib.errors import ConnectMayPass, ConnectMisconfigured
from lib.postgres import driver
from lib.postgres.diagnosis import describe, misconfiguration, sqlstate
from lib.postgres.session import Session

# Host names that resolved at least once in this process: a name that never did is a typo
# (a configuration error); one that did and fails now is a DNS outage (it may pass).
_resolved: set[str] = set()


def _policy(url: DatabaseUrl) -> driver.AuthPolicy:
    """What DATABASE_URL allows, checked when the server names its authentication method,
    before any password is sent (libpq's channel_binding and require_auth)."""

    def allow(method: str) -> None:
        if method != "none" and url.password is None:
            raise ConnectMisconfigured(
                f"the server asks for a password ({method}), but DATABASE_URL gives no password"
            )
        if method.startswith("scram") and not _utf8(url.user + (url.password or "")):
            raise ConnectMisconfigured(
                "the user or password is not UTF-8, and pg8000's SCRAM-SHA-256 sends only "
                "UTF-8: percent-encode the UTF-8 form, or use md5/password authentication"
            )
        if url.channel_binding == "require" and method != "scram-sha-256-plus":
            raise ConnectMisconfigured(
                "channel_binding=require, but the server authenticates with "
                f"'{method}' (needs SCRAM-SHA-256-PLUS over TLS): fix the server's "
                "pg_hba.conf/password_encryption, or drop channel_binding=require"
            )
        if url.require_auth is not None and method.removesuffix("-plus") not in url.require_auth:
            raise ConnectMisconfigured(
                f"require_auth allows {', '.join(sorted(url.require_auth))}, but the server "
                f"asked for '{method}'"
            )

    return allow


def _utf8(text: str) -> bool:
    """False when `text` holds bytes that are not UTF-8 (as surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def connect(
    url: DatabaseUrl,
    *,
    timeout: float,
    application_name: str | None = None,
    session: Session | None = None,
    accepted: Callable[[], None] | None = None,
) -> driver.Connection:
    """A connection to the first host of the URL that answers and matches
    target_session_attrs (libpq's order; shuffled with load_balance_hosts=random), each host
    within `timeout`; otherwise why each failed (several as one error).

    One pass: trying again, and waiting for a database that wakes, is the caller's
    (lib/postgres/gate.py, with lib/postgres/backoff.py's waits). `accepted` is called when a
    host has accepted the connection, before the login: a server that is slow from there on
    is on its way, not absent."""
    failures: list[tuple[Host, BaseException]] = []
    conn = _first_host(url, timeout, application_name, session, failures, accepted)
    if conn is None:
        raise _no_host(failures)
    return conn


def _first_host(
    url: DatabaseUrl,
    timeout: float,
    application_name: str | None,
    session: Session | None,
    failures: list[tuple[Host, BaseException]],
    accepted: Callable[[], None] | None,
) -> driver.Connection | None:
    """One pass over the URL's hosts: the first that serves, or None with why each failed
    appended to `failures`."""
    hosts = list(url.hosts)
    if url.load_balance_hosts == "random":
        random.shuffle(hosts)
    wanted = ["standby", "any"] if url.target_session_attrs == "prefer-standby" else None
    for attrs in wanted or [url.target_session_attrs]:
        for host in hosts:
            if any(h == host and not _is_mismatch(e) for h, e in failures):
                continue  # it failed to connect in the first pass: don't wait on it again
            if session is not None and (lags := session.replicas.passed_over(str(host))):
                failures.append((host, ConnectMayPass(f"{host} {lags}")))
                continue
            try:
                conn = _connect_host(url, host, timeout, application_name, session, accepted)
            except Exception as exc:  # noqa: BLE001 - the next host may answer
                failures.append((host, exc))
                continue
            mismatch = _mismatch(conn, attrs)
            if mismatch is None and session is not None:  # a lagging standby is passed over
                fallback = wanted is not None and attrs == "any" and len(hosts) > 1
                mismatch = session.replicas.admit(conn, str(host), fallback)
            if mismatch is None:
                return conn
            conn.close()
            failures.append((host, ConnectMayPass(f"{host} {mismatch}")))
    return None


def _connect_host(
    url: DatabaseUrl,
    host: Host,
    timeout: float,
    application_name: str | None,
    session: Session | None,
    accepted: Callable[[], None] | None,
) -> driver.Connection:
    """Log in to one host; again without our settings if a pooler refused them, and (libpq's
    sslmode=allow) again over TLS if the server refused the plaintext login."""
    encrypt = url.sslmode != "allow"
    for attempt in range(3):
        sock = _open_socket(host, timeout, url.keepalives)
        if accepted is not None:
            accepted()
        try:
            if encrypt and not host.socket_path and url.ssl_context is not None:
                sock = _start_tls(sock, url, host)
            params = session.startup_params() if session else dict(url.options)
            return driver.connect(
                sock,
                user=wire(url.user),
                database=wire(url.database),
                password=wire(url.password) if url.password is not None else None,
                timeout=timeout,
                application_name=wire(application_name) if application_name else None,
                startup_params={key: wire(value) for key, value in params.items()},
                allow=_policy(url),
                bind_channel=url.channel_binding != "disable",
            )
        except Exception as exc:
            sock.close()
            if attempt < 2 and session is not None and session.refused(exc):
                continue  # a pooler refused our session settings: once more without them
            if attempt < 2 and not encrypt and (sqlstate(exc) or "").startswith("28"):
                encrypt = True  # sslmode=allow: the server wants TLS
                continue
            raise
    raise AssertionError("unreachable")


def _start_tls(sock: socket.socket, url: DatabaseUrl, host: Host) -> socket.socket:
    """TLS as libpq negotiates it: an SSLRequest first (sslnegotiation=postgres), plaintext
    if the server declines and sslmode allows it; or TLS from the first byte (direct)."""
    name = host.addr if host.name.startswith(("/", "@")) else host.name
    context: Any = url.ssl_context  # set: the caller checked
    if url.sslnegotiation == "postgres":
        sock.sendall(struct.pack("!ii", 8, 80877103))
        answer = sock.recv(1)
        if answer != b"S":
            if not answer:
                raise ConnectionResetError("the server closed the connection at SSLRequest")
            if url.sslmode in ("allow", "prefer"):
                return sock
            raise ConnectMisconfigured(
                f"TLS is required (sslmode={url.sslmode}) but the server does not offer it"
            )
    return context.wrap_socket(sock, server_hostname=name if url.sslsni else None)


def _open_socket(host: Host, timeout: float, keepalives: Keepalives | None) -> socket.socket:
    """A connected socket, within `timeout`, with libpq-like keepalive settings."""
    if host.socket_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(host.socket_path)  # "\0..." for an abstract socket (host "@name")
        except OSError:
            sock.close()
            raise
        return sock
    try:
        # Bytes, as libpq passes them to getaddrinfo (no IDNA re-encoding of the name).
        sock = socket.create_connection((wire(host.addr or host.name), host.port), timeout)
    except socket.gaierror as exc:
        unknown = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
        if unknown and host.name not in _resolved:
            raise ConnectMisconfigured(
                f"host '{host.name}' does not resolve: check the host in DATABASE_URL"
            ) from exc
        raise
    except ConnectionRefusedError as exc:  # the log and /healthz say where; the body does not
        raise ConnectionRefusedError(exc.errno, f"nothing listening on {host}") from None
    _resolved.add(host.name)
    if keepalives is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", keepalives.idle),
            ("TCP_KEEPINTVL", keepalives.interval),
            ("TCP_KEEPCNT", keepalives.count),
            ("TCP_USER_TIMEOUT", keepalives.user_timeout_ms),
        ):
            option = getattr(socket, name, None)  # Linux has them all
            if option is not None and value:  # 0: the kernel's default
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return sock


def _mismatch(conn: driver.Connection, attrs: str) -> str | None:
    """Why this server does not match target_session_attrs, or None.

    The function's own sessions are read-only by design, so libpq's session-level test would
    call every server read-only: `read-write` and `primary` both mean "not a standby", and
    `read-only` matches any server.
    """
    if attrs in ("any", "read-only"):
        return None
    standby = driver.parameter(conn, "in_hot_standby")  # reported by PostgreSQL 14+
    if standby is None:
        [(recovery,)] = driver.fetch(conn, "SELECT pg_is_in_recovery()")
        standby = "on" if recovery else "off"
    if (standby == "on") == (attrs in ("standby", "prefer-standby")):
        return None
    return "is a standby" if standby == "on" else "is not a standby"


def _is_mismatch(exc: BaseException) -> bool:
    return isinstance(exc, ConnectMayPass)


def _no_host(failures: list[tuple[Host, BaseException]]) -> BaseException:
    """One failure is raised as it is; several become one error naming each host."""
    if len(failures) == 1:
        return failures[0][1]
    misconfigured = all(misconfiguration(exc) is not None for _, exc in failures)
    kind = ConnectMisconfigured if misconfigured else ConnectMayPass
    error = kind(
        "no host of DATABASE_URL could serve: "
        + "; ".join(f"{host}: {describe(exc)}" for host, exc in failures)
    )
    error.__cause__ = failures[-1][1]
    return error
