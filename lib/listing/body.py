"""The full listing's body, ended cleanly before a byte limit (RESPONSE_MAX_BYTES).

Cloud Run functions cut a streamed response at 10 MB of body (docs/http-api.md gives the
source), after the status line has said 200: a client would get part of the listing and no
sign of it but a broken transfer. Counting the bytes as they go, the listing instead ends
as valid JSON before the page that would cross the limit, with `next` set to the URL of the
following page, so a client that reads only the body knows that more remains.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from lib.listing.pages import Page


def listing_body(
    head: str,
    last_id: int | None,
    pages: Iterator[Page],
    max_bytes: int | None,
    next_url: Callable[[int], str],
) -> Iterator[bytes]:
    """`head` (the envelope and the first page, whose last key is `last_id`), then each of
    `pages`, then the closing brackets; or, before a page that would take the body past
    `max_bytes`, `],"next":...}`. The first page always goes out whole."""
    data = head.encode()
    sent = len(data)
    yield data
    for page in pages:
        data = ("," + page.json).encode()
        if max_bytes is not None and last_id is not None:
            ending = ('],"next":' + json.dumps(next_url(last_id)) + "}").encode()
            if sent + len(data) + len(ending) > max_bytes:
                yield ending
                return
        sent += len(data)
        last_id = page.last_id
        yield data
    yield b"]}"
