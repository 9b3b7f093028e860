"""gzip for clients that ask for it: what Accept-Encoding allows, and the compression itself.

JSON of users shrinks about 9x under gzip, and the bytes a client waits for are what a
listing costs it. The level is the one bench/compression.py measured as the best trade of
CPU for bytes (bench/compression.md). A listing is compressed after PostgreSQL has rendered
it and its connection is back in the pool, before the first byte is sent, so the response
has a Content-Length either way. Python's zlib only: no dependency, nothing to import.
"""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Callable
from typing import BinaryIO

LEVEL = 1  # bench/compression.md: level 1 costs least CPU per MB saved
MIN_BYTES = 1024  # below this, gzip's ~20 bytes of framing and the CPU buy nothing
CHUNK = 256 * 1024  # a spooled body is compressed this much at a time
_CODING = re.compile(r"\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*(?:;\s*q\s*=\s*([0-9.]{1,5}))?\s*")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")  # RFC 9110, 12.4.2


class Gzip(enum.Enum):
    """What a client's Accept-Encoding allows: the edge reads it once, the core applies it."""

    NO = "identity"  # identity only, or preferred
    IF_WORTH = "gzip"  # gzip a body of MIN_BYTES or more
    ONLY = "gzip-only"  # identity refused: gzip even a small body

    def applies(self, size: int) -> bool:
        """Is a body of `size` bytes sent gzip-encoded?"""
        return self is Gzip.ONLY or (self is Gzip.IF_WORTH and size >= MIN_BYTES)


def qvalues(accept_encoding: str) -> dict[str, float]:
    """Accept-Encoding as {coding: q}; elements that do not parse are ignored."""
    weights: dict[str, float] = {}
    for element in accept_encoding.split(",")[:50]:
        m = _CODING.fullmatch(element)
        if m is None or (m.group(2) is not None and not _QVALUE.fullmatch(m.group(2))):
            continue
        weights[m.group(1).lower()] = float(m.group(2) or 1)
    return weights


def negotiate(accept_encoding: str | None) -> Gzip:
    """Without Accept-Encoding a client may not decode gzip (Python's http.client does not),
    so it gets identity. `identity;q=0` (or `*;q=0` without `identity`) makes gzip the only
    acceptable coding, so even a small body is compressed. Only a client that names identity
    (or `*`) with a higher q than gzip gets identity for a large body.
    """
    if accept_encoding is None:
        return Gzip.NO
    weights = qvalues(accept_encoding)
    star = weights.get("*")
    q_gzip = weights.get("gzip", weights.get("x-gzip", star or 0.0))
    q_identity = weights.get("identity", star)  # None: acceptable, but not asked for
    if q_gzip <= 0:
        return Gzip.NO
    if q_identity == 0:
        return Gzip.ONLY
    if q_identity is not None and q_identity > q_gzip:
        return Gzip.NO
    return Gzip.IF_WORTH


def compress(body: bytes, level: int = LEVEL) -> bytes:
    """A whole body. zlib writes gzip's header with mtime 0, so the same body always gives
    the same bytes (and so the same ETag)."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    return deflate.compress(body) + deflate.flush()


def compress_file(source: BinaryIO, write: Callable[[bytes], object], level: int = LEVEL) -> None:
    """`source` (read from where it stands) to `write`, CHUNK bytes at a time: the same
    bytes as `compress` of the whole, in bounded memory."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    while chunk := source.read(CHUNK):
        write(deflate.compress(chunk))
    write(deflate.flush())
