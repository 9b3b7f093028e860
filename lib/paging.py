"""What a request asks for: every row, or one page after a cursor. Parsing only, no I/O.

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

from werkzeug.datastructures import MultiDict

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_PREFIX = "id:"
_LIMIT = re.compile(r"[0-9]{1,4}")  # [0-9], not \d: \d matches every Unicode digit
_CURSOR = re.compile(r"[A-Za-z0-9_-]{4,40}")  # base64url of "id:" and up to 20 digits
_ID = re.compile(r"[0-9]{1,20}")
_MAX_ID = 2**63 - 1  # bigint: a cursor past it is past every row


class BadRequest(ValueError):
    """A query parameter is invalid; the message says which and why."""


@dataclass(frozen=True)
class PageRequest:
    """What the caller asked for: every row (limit None), or one page after a cursor."""

    after: int = 0
    limit: int | None = None

    @classmethod
    def from_args(cls, args: MultiDict[str, str]) -> PageRequest:
        unknown = sorted(set(args) - {"limit", "cursor"})
        if unknown:
            raise BadRequest(
                f"unknown query parameter {bounded(unknown[0])}; allowed: limit, cursor "
                "(a misspelt limit must not send every row)"
            )
        for name in ("limit", "cursor"):
            if len(args.getlist(name)) > 1:
                raise BadRequest(f"{name} is given more than once")
        after = decode_cursor(args["cursor"]) if "cursor" in args else 0
        if "limit" not in args:
            return cls(after=after, limit=DEFAULT_LIMIT if "cursor" in args else None)
        # ASCII digits only: str.isdigit() is true for superscripts that int() refuses, int()
        # reads other scripts' digits, and it refuses more than 4,300 digits at all.
        if not _LIMIT.fullmatch(args["limit"]) or not 1 <= int(args["limit"]) <= MAX_LIMIT:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        return cls(after=after, limit=int(args["limit"]))


def bounded(text: str, most: int = 40) -> str:
    """A quoted excerpt of client input for an error message: never echo it unbounded."""
    return repr(text if len(text) <= most else text[:most] + "...")


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
    return min(int(digits), _MAX_ID)
