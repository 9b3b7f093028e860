"""What the core answers a listing request with; the edge renders it (lib/http/render.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lib.listing.spool import Spool


@dataclass(frozen=True)
class NotModified:
    """The client holds the current state: a 304, nothing rendered or sent."""

    etag: str


@dataclass(frozen=True)
class Listed:
    """A whole body, in the representation the client takes."""

    body: Spool
    gzip: bool  # the body is gzip-encoded
    etag: str  # strong
    next: str | None  # the next page's URL, for the Link header


Outcome = NotModified | Listed
