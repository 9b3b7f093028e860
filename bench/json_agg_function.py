"""The held-out reference: the simplest function that has PostgreSQL render the JSON.

No streaming, no paging, no telemetry, default SQLAlchemy engine. `make bench` serves it
beside the real function (functions-framework --source bench/json_agg_function.py).
"""

import os

import flask
import functions_framework
from sqlalchemy import create_engine

URL = os.environ["DATABASE_URL"].split("?")[0].replace("postgresql://", "postgresql+pg8000://")
NAME = os.environ.get("DB_APPLICATION_NAME", "json_agg_fn")  # for the bench's connection count
engine = create_engine(URL, pool_size=5, max_overflow=0, connect_args={"application_name": NAME})


@functions_framework.http
def users(request: flask.Request) -> flask.Response:
    with engine.connect() as conn:
        body = conn.exec_driver_sql("SELECT json_agg(u ORDER BY id)::text FROM users u").scalar()
    return flask.Response('{"users":' + (body or "[]") + "}", content_type="application/json")
