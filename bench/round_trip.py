"""The floor of any exact cache: functions-framework plus one pooled round trip, nothing else.

An exact validator must ask PostgreSQL something on every request; this asks the least
(`SELECT 1`) through the same stack as the function (SQLAlchemy's pool, pg8000, 5 pooled
connections and no overflow) and answers a constant body. Nothing from lib/: the figure is
the framework and the driver alone. `make bench` serves it as the variant `floor_select1`
(functions-framework --source bench/round_trip.py --target users).
"""

import os

import flask
import functions_framework
from sqlalchemy import create_engine

URL = os.environ["DATABASE_URL"].split("?")[0].replace("postgresql://", "postgresql+pg8000://")
NAME = os.environ.get("DB_APPLICATION_NAME", "floor_select1")  # for the bench's connection count
engine = create_engine(URL, pool_size=5, max_overflow=0, connect_args={"application_name": NAME})
BODY = '{"users":[]}'


@functions_framework.http
def users(request: flask.Request) -> flask.Response:
    """One `SELECT 1` on a pooled connection, then the same constant answer as `floor`."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1").scalar()
    return flask.Response(BODY, content_type="application/json")
