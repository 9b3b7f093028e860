"""What the database last did for this process, for /healthz: when a statement last
succeeded, and the last failure (classified, described without secrets).

/healthz is a liveness check that never opens a connection and never fails because the
database is down (Cloud Run would restart healthy instances for an outage they cannot fix);
this is how it still says whether the database answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lib.postgres.diagnosis import classify, describe


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


class LastKnown:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ok_at: float | None = None
        self._error: tuple[float, str, str] | None = None  # when, code, description
        # The connect gate's view (lib/postgres/gate.py), once the engine has one.
        self.connects: Callable[[], dict[str, Any]] | None = None

    def ok(self) -> None:
        self._ok_at = time.time()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._error = (time.time(), classify(exc).code, describe(exc))

    def state(self) -> dict[str, Any]:
        """`state`: "ok" (the last statement succeeded), "failing" (the last thing the
        database did was fail) or "unknown" (nothing yet); `connects`: "ok", "waking", "down"
        or "unknown", with `next_attempt_in_s` while connects fail."""
        with self._lock:
            ok_at, error = self._ok_at, self._error
        if error is not None and (ok_at is None or error[0] > ok_at):
            state = "failing"
        else:
            state = "ok" if ok_at is not None else "unknown"
        last_error = None
        if error is not None:
            last_error = {"at": _iso(error[0]), "code": error[1], "detail": error[2][:500]}
        connects = self.connects() if self.connects else {"connects": "unknown"}
        return {"state": state, "last_ok": _iso(ok_at), "last_error": last_error, **connects}
