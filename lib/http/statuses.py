"""Which HTTP status each failure code gets (the codes: lib/postgres/diagnosis.py).

Clients of a serverless function retry a 503 and give up on a 500, so the status says who
acts: 503 with Retry-After for what may pass by itself, 500 for what only a fix can cure,
504 for work that ran too long, 4xx for the request itself.
"""

from __future__ import annotations

STATUS = {
    "database_unavailable": 503,
    "pool_exhausted": 503,
    "configuration_error": 500,
    "internal": 500,
    "statement_timeout": 504,
    "deadline_exceeded": 504,
    "client_closed_request": 499,  # nginx's "client closed request": only the log sees it
}
