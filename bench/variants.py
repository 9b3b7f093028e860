"""The baselines `make bench` serves beside the real function, each with functions-framework.

    functions-framework --source bench/variants.py --target users_nullpool   (etc.)

- `users_nullpool`: the real function with a new connection per request (no pool).
- `users_rows`: the straightforward path: SQLAlchemy rows -> Python dicts -> JSON.
- `floor`: a constant JSON answer: what the framework alone costs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import flask
import functions_framework
from sqlalchemy.pool import NullPool

from bench.reference import rows_as_json
from lib import config
from lib.http import render, request
from lib.listing.cached import CachedListings
from lib.postgres.database import Database

SETTINGS = config.load_or_exit()


class KeepsNone(NullPool):
    """NullPool, with the count the connect gate asks for: it never holds an idle one."""

    def checkedin(self) -> int:
        return 0


class NullPoolDatabase(Database):
    """The same engine, but every checkout opens (and every checkin closes) a connection."""

    def _pool_args(self) -> dict[str, Any]:
        return {"poolclass": KeepsNone, "isolation_level": "AUTOCOMMIT"}


NULLPOOL_DB = NullPoolDatabase(SETTINGS)
POOLED_DB = Database(SETTINGS)
UNCACHED = CachedListings(replace(SETTINGS, response_cache_bytes=0))
ROWS_SQL = f"SELECT {', '.join(SETTINGS.columns)} FROM {SETTINGS.resource.table} ORDER BY id"


@functions_framework.http
@render.unread_body
@render.json_errors
def users_nullpool(http_request: flask.Request) -> flask.Response:
    asked = request.parse(http_request, SETTINGS)  # as main.users, without the cache
    if isinstance(asked, request.Health):
        return render.json_error(404, "not_found", "the nullpool variant serves / only")
    return render.listing(UNCACHED.respond(NULLPOOL_DB, asked.query, asked.watch), asked.watch)


@functions_framework.http
def users_rows(request: flask.Request) -> flask.Response:
    with POOLED_DB.engine().connect() as conn:
        return flask.Response(rows_as_json(conn, ROWS_SQL), content_type="application/json")


@functions_framework.http
def floor(request: flask.Request) -> flask.Response:
    return flask.Response('{"users":[]}', content_type="application/json")
