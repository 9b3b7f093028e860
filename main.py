"""Cloud Run function `users`: every row of the `users` table as JSON, through a bounded pool.

This file only wires HTTP to lib/. Importing it reads and validates configuration but opens
no connection and starts no thread: the engine is built on the first request, in the
process that serves it (see lib/engine.py).
"""

import flask
import functions_framework

from lib import config, responses, telemetry
from lib.engine import Database
from lib.users_query import Listing, PageRequest, UsersQuery

telemetry.configure_logging()
SETTINGS = config.load_or_exit()
DB = Database(SETTINGS)  # module-global: one engine (pool_size=5, max_overflow=0) per process
QUERY = UsersQuery(SETTINGS.columns)


@functions_framework.http
@telemetry.logged(DB.pool_state)
@responses.json_errors
def users(request: flask.Request) -> flask.Response:
    if request.path == "/healthz":
        return responses.health(DB.pool_state(), DB.session.health())
    responses.require_method(request)
    page = PageRequest.from_args(request.args)
    return responses.users_json(Listing(DB, QUERY, page), page)
