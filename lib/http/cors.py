"""CORS (Fetch standard, "CORS protocol"): which web pages on other origins may call the
function, off unless CORS_ALLOWED_ORIGINS names them.

For an allowed origin, a preflight (OPTIONS with Access-Control-Request-Method) is a 204
saying which methods and request headers may follow, and every other answer, errors
included, names the origin and exposes the headers a page needs to page (Link), revalidate
(ETag), back off (Retry-After) and time (Server-Timing). An origin not allowed gets no CORS
header at all, and its preflight a plain 403, so the browser blocks the call. No
credentials: the function uses no cookies, and a bearer token in Authorization needs none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flask

from lib.http.render import json_error

ANY = "*"
ALLOW_METHODS = "GET, HEAD"
# What clients send: revalidation, a bearer token (Cloud Run IAM, IAP), and the usual two.
ALLOW_HEADERS = "If-None-Match, Authorization, Content-Type, Accept-Encoding"
EXPOSE_HEADERS = "Link, ETag, Retry-After, Server-Timing"
MAX_AGE_S = 600  # how long a browser may reuse a preflight (Chromium caps it at 7200)


def allowed(origin: str | None, origins: tuple[str, ...]) -> bool:
    return origin is not None and (origins == (ANY,) or origin.lower() in origins)


def preflight(origin: str | None, origins: tuple[str, ...]) -> flask.Response:
    """The answer to a preflight: 204 with the permissions, or 403 for another origin."""
    if not allowed(origin, origins):
        return json_error(403, "origin_not_allowed", "this origin may not call the function")
    response = flask.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
    return response


def decorate(response: flask.Response, origin: str | None, origins: tuple[str, ...]) -> None:
    """Name an allowed origin on `response`; `Vary: Origin` whenever the answer depends on
    the origin (a list of origins), so no cache serves one origin's answer to another."""
    if origins != (ANY,):
        response.vary.add("Origin")
    if allowed(origin, origins):
        response.headers["Access-Control-Allow-Origin"] = ANY if origins == (ANY,) else origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS


def handled(origins: tuple[str, ...]) -> Callable:
    """Decorate the handler: answer preflights, name allowed origins on every answer.
    With no origins configured, the handler is returned as it is."""

    def decorate_handler(handler: Callable[[flask.Request], flask.Response]) -> Callable:
        if not origins:
            return handler

        @functools.wraps(handler)
        def wrapper(request: flask.Request) -> flask.Response:
            origin = request.headers.get("Origin")
            is_preflight = request.method == "OPTIONS" and (
                "Access-Control-Request-Method" in request.headers
            )
            response = preflight(origin, origins) if is_preflight else handler(request)
            decorate(response, origin, origins)
            return response

        return wrapper

    return decorate_handler
