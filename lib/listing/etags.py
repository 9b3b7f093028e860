"""ETags: one strong tag per state of the rows and shape of the response, and matching
If-None-Match against it. Pure functions, as werkzeug's sans-I/O helpers are.

A tag from the validator hashes what decides the bytes (server, token, shape, format), so
it is the same on every instance and changes whenever the bytes would; without a validator
it is the hash of the bytes themselves. Either way every 200, 304 and HEAD of one state
sends the same tag, strong: each body is one snapshot (lib/listing/pages.py).
"""

from __future__ import annotations

import hashlib

from lib.listing.query import Shape
from lib.listing.validator import Identity

# Part of every ETag: a change to what the function writes for the same rows changes it.
BODY_FORMAT = "2"
ANY = "*"


def of_state(identity: Identity, token: str, shape: Shape) -> str:
    """The tag of the response `shape` at `token` on the server `identity`. Hashed: it
    reveals nothing of the server."""
    text = repr((BODY_FORMAT, identity.system_id, identity.started, token, shape))
    return '"' + hashlib.blake2b(text.encode(), digest_size=16).hexdigest() + '"'


def of_bytes(digest: str) -> str:
    return f'"{digest}"'


def matches(held: frozenset[str], etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110, 13.1.2); "*" matches any current
    representation. `held`: the client's tags, opaque (without W/ and quotes)."""
    return ANY in held or etag.removeprefix("W/").strip('"') in held
