"""The links' base from the request's own Host and X-Forwarded-Proto, checked.

Clients follow `next` as they find it, so the link is absolute, as GitHub's API sends it
(lib/listing/paging.py builds it). Cloud Run sets Host to the name the client used and
X-Forwarded-Proto to the scheme it used; both come from the client when the function is
reached otherwise, so neither is put in a URL unchecked: a Host that is not a host name,
IPv4 or bracketed IPv6 address (with an optional port) is a 400 (RFC 9112, 3.2), and a
scheme other than http or https is ignored.
"""

from __future__ import annotations

import re

from lib.errors import BadRequest
from lib.names import LABEL

_HOST = re.compile(rf"(?:{LABEL}(?:\.{LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?")
_SCHEMES = ("http", "https")


def origin(host: str, forwarded_proto: str, scheme: str) -> str:
    """`scheme://host[:port]` of a request as the client addressed it."""
    if len(host) > 260 or not _HOST.fullmatch(host):
        raise BadRequest("the Host header is not a valid host name")
    forwarded = forwarded_proto.split(",")[0].strip().lower()
    return f"{forwarded if forwarded in _SCHEMES else scheme}://{host}"
