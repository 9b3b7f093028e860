"""Cancel a running statement the way libpq's PQcancel does: a CancelRequest on a new
connection to the same server (PostgreSQL protocol, "Canceling Requests in Progress").

pg8000 has no cancel of its own; it keeps the BackendKeyData the server sent at login in
`_backend_key_data`, and its socket in `_usock` (tests/test_cancel.py fails loudly if a
pg8000 upgrade moves either). The request is sent without TLS, as libpq before 17 does: the
server reads it before any authentication, and pg_hba does not apply to it. Through the
Cloud SQL Connector the server side only speaks TLS with the Connector's client
certificate: there the cancel fails, is logged, and statement_timeout still bounds the work.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

CANCEL_REQUEST_CODE = 80877102
_TIMEOUT_S = 2.0


def send_cancel(dbapi_connection: Any) -> None:
    """Ask the server to cancel the statement running on `dbapi_connection` (OSError if it
    cannot be asked). The server acts on it asynchronously and answers nothing."""
    key = getattr(dbapi_connection, "_backend_key_data", None)
    usock = getattr(dbapi_connection, "_usock", None)
    if not key or usock is None:
        raise OSError("the connection has no cancel key")
    peer = usock.getpeername()
    with socket.socket(usock.family, socket.SOCK_STREAM) as sock:
        sock.settimeout(_TIMEOUT_S)
        sock.connect(peer)
        sock.sendall(struct.pack("!ii", 16, CANCEL_REQUEST_CODE) + bytes(key))
        sock.recv(1)  # the server closes the connection once it has read the request
