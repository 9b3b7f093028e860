"""Cloud Run function `users`: every row of the `users` table as JSON, through a bounded pool.

This file only wires HTTP to lib/. Importing it reads and validates configuration but opens
no connection and starts no thread: the engine is built on the first request, in the
process that serves it (see lib/postgres/database.py).
"""

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

from lib import config
from lib.http import cors, health_lane, telemetry
from lib.http import render as responses
from lib.listing.cached import CachedListings
from lib.listing.paging import PageRequest
from lib.postgres.database import Database
from lib.postgres.watch import Watch

telemetry.configure_logging()
health_lane.install()  # under gunicorn, /healthz waits for no request thread
SETTINGS = config.load_or_exit()
DB = Database(SETTINGS)  # module-global: one engine (pool_size=5, max_overflow=0) per process
LISTINGS = CachedListings(SETTINGS)  # this process's response cache (docs/cache.md)


@functions_framework.http
@responses.unread_body
@telemetry.logged(DB.pool_state, SETTINGS.project)
@cors.handled(SETTINGS.cors_origins)
@responses.json_errors
def users(request: flask.Request) -> flask.Response:
    if responses.route(request) == "/healthz":
        database = {**DB.session.health(), **DB.last_known.state()}
        return responses.health(DB.pool_state(), database, LISTINGS.health())
    page = PageRequest.from_args(request.args)
    watch = Watch.of(request.environ, SETTINGS.request_timeout, SETTINGS.client_idle_timeout)
    return LISTINGS.respond(request, DB, SETTINGS.resource, SETTINGS.schema, page, watch)


# What functions-framework answers itself (a 404 for /robots.txt and /favicon.ico) is JSON too.
functions_framework.errorhandler(HTTPException)(responses.framework_error)
