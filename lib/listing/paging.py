"""What a request asks for, every row or one page after a cursor, and the link to the next
page. Values only: the edge parses the query string into a `PageRequest` (lib/http/request.py).

A cursor is opaque to callers (base64url of "id:" and the last key sent), so the keyset can
change without breaking them; anything that is not one of ours is a 400, never an error of
the database's. openapi.yaml's `cursor` pattern is exactly the cursors issued here
(tests/test_fuzz.py).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from lib.errors import BadRequest

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_PREFIX = "id:"
_CURSOR = re.compile(r"[A-Za-z0-9_-]{4,40}")  # base64url of "id:" and up to 20 digits
_ID = re.compile(r"[0-9]{1,20}")
MAX_ID = 2**63 - 1  # bigint: a cursor past it is past every row


@dataclass(frozen=True)
class PageRequest:
    """What the caller asked for: every row (limit None), or one page after a cursor."""

    after: int = 0
    limit: int | None = None


def encode_cursor(last_id: int) -> str:
    """Opaque to callers, so the keyset can change without breaking them."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor of ours carries; anything else (any length, any alphabet) is a 400."""
    if not _CURSOR.fullmatch(cursor):
        raise BadRequest("cursor is not one this function returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raw = ""
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not _ID.fullmatch(digits):
        raise BadRequest("cursor is not one this function returned")
    return min(int(digits), MAX_ID)


def next_url(origin: str, path: str, limit: int, last_id: int) -> str:
    """The absolute URL of the page after key `last_id` (`origin`: scheme://host, checked by
    the edge): clients follow `next` as they find it, and requests, httpx and Node's fetch
    refuse a relative reference."""
    return f"{origin}{path}?limit={limit}&cursor={encode_cursor(last_id)}"
