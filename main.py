"""Cloud Run function `users`: every row of the `users` table as JSON, through a bounded pool.

This file only wires HTTP to lib/. Importing it reads and validates configuration but opens
no connection and starts no thread: the engine is built on the first request, in the
process that serves it (see lib/postgres/database.py).
"""

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

from lib import config
from lib.http import cors, health_lane, render, request, telemetry
from lib.listing.cached import CachedListings
from lib.postgres.database import Database

telemetry.configure_logging()
health_lane.install()  # under gunicorn, /healthz waits for no request thread
SETTINGS = config.load_or_exit()
DB = Database(SETTINGS)  # module-global: one engine (pool_size=5, max_overflow=0) per process
LISTINGS = CachedListings(SETTINGS)  # this process's response cache (docs/cache.md)


@functions_framework.http
@render.unread_body
@telemetry.logged(DB.pool_state, SETTINGS.project)
@cors.handled(SETTINGS.cors_origins)
@render.json_errors
def users(http_request: flask.Request) -> flask.Response:
    asked = request.parse(http_request, SETTINGS)  # a bad request ends here, before any I/O
    if isinstance(asked, request.Health):
        database = {**DB.session.health(), **DB.last_known.state()}
        return render.health(DB.pool_state(), database, LISTINGS.health())
    return render.listing(LISTINGS.respond(DB, asked.query, asked.watch), asked.watch)


# What functions-framework answers itself (a 404 for /robots.txt and /favicon.ico) is JSON too.
functions_framework.errorhandler(HTTPException)(render.framework_error)
