"""Connecting through DATABASE_URL, with libpq's rules on top of pg8000.

pg8000 dials one host and takes any authentication the server proposes. libpq, whose URLs
users paste, tries a list of hosts in order, each within connect_timeout, keeps the first
that matches target_session_attrs, refuses a server that will not do channel binding when
asked to, and tunes TCP keepalives. This module does those things, then hands pg8000 the
open socket.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
import time
from typing import Any

import pg8000.dbapi

from lib.database_url import DatabaseUrl, Host, Keepalives, wire
from lib.failures import ConnectError, describe, may_pass, misconfiguration, sqlstate
from lib.session import Session

# Host names that resolved at least once in this process: a name that never did is a typo
# (a configuration error); one that did and fails now is a DNS outage (it may pass).
_resolved: set[str] = set()
_PLUS = b"SCRAM-SHA-256-PLUS"


class Connection(pg8000.dbapi.Connection):
    """pg8000's connection, refusing an authentication that DATABASE_URL forbids (channel
    binding, require_auth) before any password is sent, as libpq does."""

    def __init__(self, *args: Any, url: DatabaseUrl, **kwargs: Any) -> None:
        self._url = url
        self._method: str | None = None  # the authentication the server asked for
        super().__init__(*args, **kwargs)

    def handle_AUTHENTICATION_REQUEST(self, data: bytes, context: Any) -> None:
        code = struct.unpack_from("!i", data)[0]
        tls = isinstance(self._usock, ssl.SSLSocket)
        if code == 10:  # SASL: pg8000 picks SCRAM-SHA-256-PLUS when offered over TLS
            plus = tls and _PLUS in data and self._url.channel_binding != "disable"
            self._method = "scram-sha-256-plus" if plus else "scram-sha-256"
            self._allow(self._method)
        elif code in (3, 5):
            self._method = "password" if code == 3 else "md5"
            self._allow(self._method)
        elif code == 0 and self._method is None:
            self._method = "none"  # trust: the server asked for nothing
            self._allow("none")
        if code == 10 and tls and self._url.channel_binding == "disable":
            # pg8000 binds the channel whenever its socket is TLS: hide it for this one
            # message, so SCRAM says "client does not support binding" ('n'), as libpq does.
            usock, self._usock = self._usock, None
            try:
                super().handle_AUTHENTICATION_REQUEST(data, context)
            finally:
                self._usock = usock
            return
        super().handle_AUTHENTICATION_REQUEST(data, context)

    def _allow(self, method: str) -> None:
        url = self._url
        if method != "none" and url.password is None:
            raise ConnectError(
                f"the server asks for a password ({method}), but DATABASE_URL gives no password",
                misconfigured=True,
            )
        if method.startswith("scram") and not _utf8(url.user + (url.password or "")):
            raise ConnectError(
                "the user or password is not UTF-8, and pg8000's SCRAM-SHA-256 sends only "
                "UTF-8: percent-encode the UTF-8 form, or use md5/password authentication",
                misconfigured=True,
            )
        if url.channel_binding == "require" and method != "scram-sha-256-plus":
            raise ConnectError(
                "channel_binding=require, but the server authenticates with "
                f"'{method}' (needs SCRAM-SHA-256-PLUS over TLS): fix the server's "
                "pg_hba.conf/password_encryption, or drop channel_binding=require",
                misconfigured=True,
            )
        if url.require_auth is not None and method.removesuffix("-plus") not in url.require_auth:
            raise ConnectError(
                f"require_auth allows {', '.join(sorted(url.require_auth))}, but the server "
                f"asked for '{method}'",
                misconfigured=True,
            )


def _utf8(text: str) -> bool:
    """False when `text` holds bytes that are not UTF-8 (as surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Connecting again while a database wakes (scale to zero, a restart) or its pooler is full:
# at most this many attempts, each wait twice the last (from the first to the longest, half
# of it random), all within the connect budget.
_CONNECT_ATTEMPTS = 10
_FIRST_WAIT_S, _LONGEST_WAIT_S = 0.1, 2.0
_LAST_TRY_S = 0.1  # no attempt starts with less of the budget left than this


def connect(
    url: DatabaseUrl,
    *,
    timeout: float,
    application_name: str | None = None,
    session: Session | None = None,
) -> Connection:
    """A connection to the first host of the URL that answers and matches
    target_session_attrs (libpq's order; shuffled with load_balance_hosts=random).

    `timeout` (DB_CONNECT_TIMEOUT) is the budget. When every host failed with what may pass
    by itself (failures.may_pass: a server starting up, nothing listening yet, a pooler full
    or waking its database), the hosts are tried again after an exponential back-off with
    jitter, until one serves or the budget or the attempts are spent: then the last failures
    are raised. A misconfiguration is raised at once."""
    deadline = time.monotonic() + timeout
    for attempt in range(_CONNECT_ATTEMPTS):
        failures: list[tuple[Host, BaseException]] = []
        left = max(deadline - time.monotonic(), _LAST_TRY_S)
        conn = _first_host(url, left, application_name, session, failures)
        if conn is not None:
            return conn
        wait = _backoff(attempt, deadline - time.monotonic() - _LAST_TRY_S)
        if wait is None or not all(may_pass(exc) for _, exc in failures):
            break
        time.sleep(wait)
    raise _no_host(failures)


def _backoff(attempt: int, room: float) -> float | None:
    """The wait after attempt `attempt` (from 0) failed: doubling from _FIRST_WAIT_S up to
    _LONGEST_WAIT_S, its second half random (instances that failed together come back apart),
    cut to the `room` left in the budget. None when the attempts or the budget are spent."""
    if attempt + 1 >= _CONNECT_ATTEMPTS or room <= 0:
        return None
    ceiling = min(_FIRST_WAIT_S * 2**attempt, _LONGEST_WAIT_S)
    return min(ceiling / 2 + random.uniform(0, ceiling / 2), room)  # noqa: S311 - jitter


def _first_host(
    url: DatabaseUrl,
    timeout: float,
    application_name: str | None,
    session: Session | None,
    failures: list[tuple[Host, BaseException]],
) -> Connection | None:
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
            try:
                conn = _connect_host(url, host, timeout, application_name, session)
            except Exception as exc:  # noqa: BLE001 - the next host may answer
                failures.append((host, exc))
                continue
            mismatch = _mismatch(conn, attrs)
            if mismatch is None:
                return conn
            conn.close()
            failures.append((host, ConnectError(f"{host} {mismatch}", misconfigured=False)))
    return None


def _connect_host(
    url: DatabaseUrl,
    host: Host,
    timeout: float,
    application_name: str | None,
    session: Session | None,
) -> Connection:
    """Log in to one host; again without our settings if a pooler refused them, and (libpq's
    sslmode=allow) again over TLS if the server refused the plaintext login."""
    encrypt = url.sslmode != "allow"
    for attempt in range(3):
        sock = _open_socket(host, timeout, url.keepalives)
        try:
            if encrypt and not host.socket_path and url.ssl_context is not None:
                sock = _start_tls(sock, url, host)
            params = session.startup_params() if session else dict(url.options)
            return Connection(
                user=wire(url.user),
                database=wire(url.database),
                password=wire(url.password) if url.password is not None else None,
                ssl_context=False,  # TLS, if any, is ours: see _start_tls
                timeout=timeout,
                tcp_keepalive=False,  # set on the socket, with our timings
                application_name=wire(application_name) if application_name else None,
                startup_params={key: wire(value) for key, value in params.items()},
                sock=sock,
                url=url,
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
            raise ConnectError(
                f"TLS is required (sslmode={url.sslmode}) but the server does not offer it",
                misconfigured=True,
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
            raise ConnectError(
                f"host '{host.name}' does not resolve: check the host in DATABASE_URL",
                misconfigured=True,
            ) from exc
        raise
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


def _mismatch(conn: Connection, attrs: str) -> str | None:
    """Why this server does not match target_session_attrs, or None.

    The function's own sessions are read-only by design, so libpq's session-level test would
    call every server read-only: `read-write` and `primary` both mean "not a standby", and
    `read-only` matches any server.
    """
    if attrs in ("any", "read-only"):
        return None
    standby = conn.parameter_statuses.get("in_hot_standby")  # reported by PostgreSQL 14+
    if standby is None:
        cursor = conn.cursor()
        cursor.execute("SELECT pg_is_in_recovery()")
        standby = "on" if cursor.fetchone()[0] else "off"
        cursor.close()
    if (standby == "on") == (attrs in ("standby", "prefer-standby")):
        return None
    return "is a standby" if standby == "on" else "is not a standby"


def _is_mismatch(exc: BaseException) -> bool:
    return isinstance(exc, ConnectError) and exc.misconfigured is False


def _no_host(failures: list[tuple[Host, BaseException]]) -> BaseException:
    """One failure is raised as it is; several become one error naming each host."""
    if len(failures) == 1:
        return failures[0][1]
    misconfigured = all(misconfiguration(exc) is not None for _, exc in failures)
    error = ConnectError(
        "no host of DATABASE_URL could serve: "
        + "; ".join(f"{host}: {describe(exc)}" for host, exc in failures),
        misconfigured=misconfigured,
    )
    error.__cause__ = failures[-1][1]
    return error
