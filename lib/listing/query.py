"""One listing request as values, parsed once by the edge (lib/http/request.py) before any
I/O: what the bytes depend on besides the rows (`Shape`), and what the client already holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.listing.compression import Gzip
from lib.listing.paging import PageRequest
from lib.resource import Resource


@dataclass(frozen=True)
class Shape:
    """Everything but the rows that decides a response's bytes: the table and its columns,
    the page, the encoding the client takes, the links' base and path, and where a full
    listing ends with `next` (RESPONSE_MAX_BYTES). The response cache's key, with the server."""

    resource: Resource
    page: PageRequest
    gzip: Gzip
    origin: str  # scheme://host of the links, checked (lib/http/links.py)
    path: str
    max_bytes: int | None


@dataclass(frozen=True)
class Query:
    shape: Shape
    if_none_match: frozenset[str] = frozenset()  # opaque tags the client holds; "*": any
