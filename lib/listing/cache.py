"""Rendered responses kept in memory, bounded in bytes, and whether probing still pays.

An entry is one response's body, in the encoding its request shape takes, with the
validator token it was rendered at; its key is (the server, the request's shape)
(lib/listing/cached.py). A request whose shape no entry holds skips the probe: it could only
miss. Nothing here does I/O or decides freshness: the caller serves an
entry only when a probe or render just read the same token from the same server.

A probe costs a round trip; it pays only when it often finds the token unchanged. When
writes elsewhere in the cluster make nearly every probe miss, the caller skips it and
renders at once; each render still tells whether a probe would have hit (its token equals
the stored one), so the hit rate keeps being measured and probing resumes when it rises.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

# Below this share of hits over the recent window, probing costs more than it saves: a miss
# costs a probe plus a render, and a probe is ~5% of a render's database CPU (BENCHMARKS.md).
MIN_HIT_RATE = 0.1
WINDOW = 64  # recent lookups the hit rate is measured over
MIN_SEEN = 16  # lookups before the rate is trusted enough to stop probing
ENTRY_OVERHEAD = 400  # bytes of Python objects around each entry's bodies (key, token, node)


@dataclass(frozen=True)
class Entry:
    """One rendered response and the token it was read at."""

    token: str
    body: bytes
    gzip: bool = False  # the body is gzip-encoded
    next: str | None = None  # the next page's URL (Link)

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD


class ResponseCache:
    """A thread-safe LRU of `Entry`s, at most `max_bytes` in all, with the recent hit rate."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Hashable, Hashable], Entry] = OrderedDict()
        self._shapes: Counter[Hashable] = Counter()  # entries held for each request shape
        self._bytes = 0
        self._recent: deque[bool] = deque(maxlen=WINDOW)
        self._hits = self._misses = self._skipped = 0
        self._lock = threading.Lock()

    def holds(self, shape: Hashable) -> bool:
        """Whether any entry (from any server) answers this request shape."""
        return self._shapes[shape] > 0

    def get(self, key: tuple[Hashable, Hashable], token: str) -> Entry | None:
        """The entry for `key` if it was rendered at `token`, else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.token != token:
                return None
            self._entries.move_to_end(key)
            return entry

    def count(self, hit: bool) -> None:
        """A probe's outcome: served from the validator (an entry or a 304), or not."""
        with self._lock:
            self._count(hit)

    def rendered(self, key: tuple[Hashable, Hashable], entry: Entry) -> None:
        """Store a fresh render; if it replaces one at the same token, a probe would have hit
        (counted, so the rate is measured while probes are skipped). Too big: not kept."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._forget(key, old)
                if self._skipping():
                    self._count(old.token == entry.token)
            if entry.size > self.max_bytes:
                return
            self._entries[key] = entry
            self._bytes += entry.size
            self._shapes[key[1]] += 1
            self._evict()

    def should_probe(self) -> bool:
        """False while recent lookups mostly missed: render at once instead."""
        with self._lock:
            skip = self._skipping()
            if skip:
                self._skipped += 1
            return not skip

    def health(self) -> dict[str, Any]:
        with self._lock:
            seen = len(self._recent)
            return {
                "max_bytes": self.max_bytes,
                "bytes": self._bytes,
                "entries": len(self._entries),
                "hits": self._hits,
                "misses": self._misses,
                "probes_skipped": self._skipped,
                "recent_hit_rate": round(sum(self._recent) / seen, 3) if seen else None,
                "probing": not self._skipping(),
            }

    def _skipping(self) -> bool:
        seen = len(self._recent)
        return seen >= MIN_SEEN and sum(self._recent) < MIN_HIT_RATE * seen

    def _count(self, hit: bool) -> None:
        self._recent.append(hit)
        if hit:
            self._hits += 1
        else:
            self._misses += 1

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            self._forget(*self._entries.popitem(last=False))

    def _forget(self, key: tuple[Hashable, Hashable], old: Entry) -> None:
        self._bytes -= old.size
        self._shapes[key[1]] -= 1
        if not self._shapes[key[1]]:
            del self._shapes[key[1]]
