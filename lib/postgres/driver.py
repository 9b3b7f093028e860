"""pg8000, the driver, behind one boundary: the only module of the function that imports it.

What the function needs from a driver is small: a login on a socket that
lib/database_url/connect.py opened (host choice and TLS are ours), with an authentication
policy checked before any password is sent; a read timeout for the statements after it;
running one statement; its exceptions in our own terms (lib/errors.py), so that nothing else
knows pg8000's error layout; and what it cannot do, which a URL may ask for.
Switching drivers means rewriting this module and the dialect name, nothing else.

pg8000 has no public API for three of those, so this module reaches into its private parts:
`handle_AUTHENTICATION_REQUEST` (the authentication hook), `_usock` (its socket) and
`_backend_key_data` (the key a cancel needs). Each has a test (tests/test_driver.py,
tests/test_cancel.py) that fails loudly when an upgrade moves it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pg8000.dbapi

from lib.errors import DatabaseError, Disconnected, ServerError

NAME = "pg8000"  # how the Cloud SQL connector names it
DIALECT = "postgresql+pg8000://"  # SQLAlchemy's dialect; our creator makes the connections
# What pg8000 cannot do, which a DATABASE_URL may ask for (lib/database_url/uri.py refuses
# those keywords, saying why): its limits live here, with the driver.
PROTOCOL = "3.0"  # the only protocol version pg8000 speaks
ENCODINGS = ("utf8", "unicode")  # the server's spellings of the one it speaks (case folded)
CANNOT = {
    **dict.fromkeys(("krbsrvname", "gsslib", "gssdelegation"), "pg8000 has no GSSAPI/Kerberos"),
    **dict.fromkeys(
        ("oauth_issuer", "oauth_client_id", "oauth_client_secret", "oauth_scope", "oauth_ca_file"),
        "pg8000 has no OAuth authentication",
    ),
    **dict.fromkeys(
        ("scram_client_key", "scram_server_key"), "pg8000's SCRAM logs in with the password only"
    ),
}

# Called with the authentication method the server asks for ("none", "password", "md5",
# "scram-sha-256", "scram-sha-256-plus"); raises to refuse it before any password is sent.
AuthPolicy = Callable[[str], None]
_PLUS = b"SCRAM-SHA-256-PLUS"
_CANCEL_REQUEST_CODE = 80877102
_CANCEL_TIMEOUT_S = 2.0


class Connection(pg8000.dbapi.Connection):
    """pg8000's connection, asking `allow` before each authentication it answers."""

    def __init__(self, *args: Any, allow: AuthPolicy, bind_channel: bool, **kwargs: Any) -> None:
        self._allow, self._bind_channel = allow, bind_channel
        self._method: str | None = None  # the authentication the server asked for
        super().__init__(*args, **kwargs)

    def handle_AUTHENTICATION_REQUEST(self, data: bytes, context: Any) -> None:
        code = struct.unpack_from("!i", data)[0]
        tls = isinstance(self._usock, ssl.SSLSocket)
        if code == 10:  # SASL: pg8000 picks SCRAM-SHA-256-PLUS when offered over TLS
            plus = tls and _PLUS in data and self._bind_channel
            self._method = "scram-sha-256-plus" if plus else "scram-sha-256"
            self._allow(self._method)
        elif code in (3, 5):
            self._method = "password" if code == 3 else "md5"
            self._allow(self._method)
        elif code == 0 and self._method is None:
            self._method = "none"  # trust: the server asked for nothing
            self._allow("none")
        if code == 10 and tls and not self._bind_channel:
            # pg8000 binds the channel whenever its socket is TLS: hide it for this one
            # message, so SCRAM says "client does not support binding" ('n'), as libpq does.
            usock, self._usock = self._usock, None
            try:
                super().handle_AUTHENTICATION_REQUEST(data, context)
            finally:
                self._usock = usock
            return
        super().handle_AUTHENTICATION_REQUEST(data, context)


def connect(
    sock: socket.socket,
    *,
    user: bytes,
    database: bytes,
    password: bytes | None,
    timeout: float,
    application_name: bytes | None,
    startup_params: dict[str, bytes],
    allow: AuthPolicy,
    bind_channel: bool,
) -> Connection:
    """Log in on `sock` (already connected, and already TLS if it is to be). pg8000 then does
    no TLS and no keepalives of its own: both are the caller's."""
    with translated():
        return Connection(
            user=user,
            database=database,
            password=password,
            ssl_context=False,
            timeout=timeout,
            tcp_keepalive=False,
            application_name=application_name,
            startup_params=startup_params,
            sock=sock,
            allow=allow,
            bind_channel=bind_channel,
        )


def set_read_timeout(conn: Any, seconds: float) -> None:
    """pg8000 keeps its connect timeout as the timeout of every later read of the socket; a
    read may legitimately last as long as a statement may run."""
    conn._usock.settimeout(seconds)


def fetch(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement and return its rows. Without `params` pg8000 uses the simple-query
    protocol: one round trip, nothing prepared (which transaction poolers need)."""
    with translated():
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()


def cancel(conn: Any) -> None:
    """Ask the server to cancel the statement running on `conn`, as libpq's PQcancel does: a
    CancelRequest (PostgreSQL protocol, "Canceling Requests in Progress") with the
    BackendKeyData of the login, on a new connection to the same address. Sent without TLS,
    as libpq before 17 sends it: the server reads it before any authentication, and pg_hba
    does not apply. OSError when it cannot be sent (through the Cloud SQL Connector, whose
    server side speaks only the Connector's TLS). The server answers nothing."""
    key, usock = getattr(conn, "_backend_key_data", None), getattr(conn, "_usock", None)
    if not key or usock is None:
        raise OSError("the connection has no cancel key")
    with socket.socket(usock.family, socket.SOCK_STREAM) as sock:
        sock.settimeout(_CANCEL_TIMEOUT_S)
        sock.connect(usock.getpeername())
        sock.sendall(struct.pack("!ii", 16, _CANCEL_REQUEST_CODE) + bytes(key))
        sock.recv(1)  # the server closes the connection once it has read the request


def parameter(conn: Any, name: str) -> str | None:
    """A parameter the server reported at login (ParameterStatus), e.g. in_hot_standby."""
    return conn.parameter_statuses.get(name)


def close_quietly(conn: Any) -> None:
    """Close a connection nobody will use; one that is already dead fails to say goodbye."""
    with contextlib.suppress(Exception):
        conn.close()


def translate(exc: BaseException) -> DatabaseError | None:
    """The driver's exception in our terms; None for anything that is not the driver's."""
    return _ours(exc) if isinstance(exc, pg8000.dbapi.Error) else None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise the driver's exceptions as ours (the driver's stays the __cause__)."""
    try:
        yield
    except pg8000.dbapi.Error as exc:
        raise _ours(exc) from exc


def _ours(exc: pg8000.dbapi.Error) -> DatabaseError:
    """pg8000 raises a server's error with its fields as a dict in args[0]; InterfaceError for
    a failed socket or a closed connection."""
    if exc.args and isinstance(exc.args[0], dict):
        return ServerError({str(k): str(v) for k, v in exc.args[0].items()})
    if isinstance(exc, pg8000.dbapi.InterfaceError):
        return Disconnected(str(exc))
    return DatabaseError(str(exc))
