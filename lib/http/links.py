"""Absolute links to the next page, from the request's own Host and X-Forwarded-Proto.

Clients follow `next` as they find it: requests, httpx and Node's fetch refuse a relative
reference (`?limit=...`), so the link is absolute, as GitHub's API sends it. Cloud Run sets
Host to the name the client used and X-Forwarded-Proto to the scheme it used; both come
from the client when the function is reached otherwise, so neither is put in a URL unchecked:
a Host that is not a host name, IPv4 or bracketed IPv6 address (with an optional port) is a
400, and a scheme other than http or https is ignored.
"""

from __future__ import annotations

import re

import flask

from lib.listing.paging import BadRequest, encode_cursor

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?")
_SCHEMES = ("http", "https")


def origin(request: flask.Request) -> str:
    """`scheme://host[:port]` of this request as the client addressed it."""
    host = request.headers.get("Host", "")
    if len(host) > 260 or not _HOST.fullmatch(host):
        raise BadRequest("the Host header is not a valid host name")
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    scheme = forwarded if forwarded in _SCHEMES else request.scheme
    return f"{scheme}://{host}"


def next_page(request: flask.Request, limit: int, last_id: int) -> str:
    """The absolute URL of the page after key `last_id`."""
    return f"{origin(request)}{request.path}?limit={limit}&cursor={encode_cursor(last_id)}"
