"""gzip for clients that ask for it: whole bodies at once, streamed listings page by page.

JSON of users shrinks about 9x under gzip, and the bytes a client waits for are what a
listing costs it. The level is the one bench/compression.py measured as the best trade of
CPU for bytes (bench/compression.md). A streamed listing is compressed as it streams: one
compressor per response, flushed after every page, so memory stays bounded and the client
can decode each page as it arrives. Python's zlib only: no dependency, nothing to import.
"""

from __future__ import annotations

import re
import zlib

LEVEL = 1  # bench/compression.md: level 1 costs least CPU per MB saved
MIN_BYTES = 1024  # below this, gzip's ~20 bytes of framing and the CPU buy nothing
_CODING = re.compile(r"\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*(?:;\s*q\s*=\s*([0-9.]{1,5}))?\s*")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")  # RFC 9110, 12.4.2


def qvalues(accept_encoding: str) -> dict[str, float]:
    """Accept-Encoding as {coding: q}; elements that do not parse are ignored."""
    weights: dict[str, float] = {}
    for element in accept_encoding.split(",")[:50]:
        m = _CODING.fullmatch(element)
        if m is None or (m.group(2) is not None and not _QVALUE.fullmatch(m.group(2))):
            continue
        weights[m.group(1).lower()] = float(m.group(2) or 1)
    return weights


def use_gzip(accept_encoding: str | None, size: int | None) -> bool:
    """Should a body of `size` bytes (None: streamed, so large) be sent gzip-encoded?

    Without Accept-Encoding a client may not decode gzip (Python's http.client does not),
    so it gets identity. `identity;q=0` (or `*;q=0` without `identity`) makes gzip the only
    acceptable coding, so even a small body is compressed. Only a client that names identity
    (or `*`) with a higher q than gzip gets identity for a large body.
    """
    if accept_encoding is None:
        return False
    weights = qvalues(accept_encoding)
    star = weights.get("*")
    q_gzip = weights.get("gzip", weights.get("x-gzip", star or 0.0))
    q_identity = weights.get("identity", star)  # None: acceptable, but not asked for
    if q_gzip <= 0:
        return False
    if q_identity == 0:
        return True
    if q_identity is not None and q_identity > q_gzip:
        return False
    return size is None or size >= MIN_BYTES


def compress(body: bytes, level: int = LEVEL) -> bytes:
    """A whole body. zlib writes gzip's header with mtime 0, so the same body always gives
    the same bytes (and so the same ETag)."""
    return GzipStream(level).finish(body)


class GzipStream:
    """One gzip member written page by page; each page is flushed (Z_SYNC_FLUSH), so what
    was sent so far decodes, and a stream cut before `finish` lacks gzip's trailer."""

    def __init__(self, level: int = LEVEL) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip

    def page(self, data: bytes) -> bytes:
        return self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._deflate.compress(data) + self._deflate.flush(zlib.Z_FINISH)
