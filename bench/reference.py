"""The straightforward rendering (rows -> Python dicts -> JSON): the benchmark's baseline and
the tests' reference for what the PostgreSQL-rendered JSON must equal."""

from __future__ import annotations

import datetime
import json
import uuid
from decimal import Decimal
from typing import Any


def to_json(value: object) -> object:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def rows_as_json(conn: Any, sql: str) -> str:
    """One Python dict per row of `sql` (a SQLAlchemy Connection), then json.dumps."""
    users = [dict(row._mapping) for row in conn.exec_driver_sql(sql)]
    return json.dumps({"users": users}, default=to_json, ensure_ascii=False, separators=(",", ":"))
