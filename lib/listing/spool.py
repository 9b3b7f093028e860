"""A response body held whole before it is sent: in memory up to a bound, then a temporary
file.

A listing is rendered by PostgreSQL into the spool as fast as it can, on one connection in
one snapshot, and the connection goes back to the pool before the first byte is sent: a slow
client then holds a thread and a spool, never a connection. Sent whole, the body has a
Content-Length every client can check, and on Cloud Run it may be 32 MB where a streamed one
is cut at 10 MB.

The bounds (docs/sizing.md): MEMORY_BYTES keeps a page of up to ~10,000 users in memory
(a `?limit=` page is at most 1,000), so small answers never touch the disk; a larger listing
goes to a file, whose pages the kernel keeps. On Cloud Run /tmp is memory too, so an
instance holds at most THREADS x the largest response either way.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterator

from lib.listing import compression

MEMORY_BYTES = 1024 * 1024
MAX_BYTES = 1024 * 1024 * 1024  # the largest listing a spool takes: past it, `next` (no limit set)


class Spool:
    """Bytes written once, then read any number of times; with their digest for an ETag."""

    def __init__(self, file: io.BytesIO | None = None) -> None:
        self._file: io.BytesIO | tempfile.SpooledTemporaryFile[bytes] = (
            file or tempfile.SpooledTemporaryFile(max_size=MEMORY_BYTES)  # noqa: SIM115 - close()
        )
        self._hash = hashlib.blake2b(digest_size=16)
        self.size = 0

    @classmethod
    def of(cls, data: bytes) -> Spool:
        """A body already held in memory whole (a cached one): served from there, unhashed
        (its ETag comes from the validator)."""
        made = cls(io.BytesIO(data))
        made.size = len(data)
        return made

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> str:
        """Of the bytes written (not of a body made with `of`)."""
        return self._hash.hexdigest()

    def read(self) -> bytes:
        """The whole body (for a body small enough to keep in the response cache)."""
        self._file.seek(0)
        return self._file.read()

    def slices(self, size: int) -> Iterator[bytes]:
        """The body from its start, `size` bytes at a time."""
        self._file.seek(0)
        while piece := self._file.read(size):
            yield piece

    def gzipped(self) -> Spool:
        """The body gzip-encoded, in a spool of its own (compression.compress_file)."""
        target = Spool()
        self._file.seek(0)
        compression.compress_file(self._file, target.write)
        return target

    def close(self) -> None:
        self._file.close()
