"""The back-off rule as a table (lib/postgres/backoff.py)."""

from __future__ import annotations

import pytest

from lib.postgres.backoff import FIRST_S, MAX_S, next_interval


@pytest.mark.parametrize(
    ("interval", "retry_at", "now", "expected"),
    [
        (0, 0, 5, FIRST_S),  # the first failure after a success
        (1, 10, 10, 2),  # the retry the interval allowed failed: doubled
        (2, 10, 11, 4),
        (16, 10, 10, MAX_S),  # capped
        (MAX_S, 10, 10, MAX_S),
        (4, 10, 9, 4),  # a concurrent attempt inside the interval: unchanged
    ],
)
def test_the_interval_after_a_failure(interval, retry_at, now, expected):
    assert next_interval(interval, retry_at, now) == expected
