"""Test helpers: the function's stdout read back as structured log lines."""

from __future__ import annotations

import json


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def request_lines(text: str) -> list[dict]:
    """The one-per-request lines (lib/http/telemetry.py)."""
    return [line for line in log_lines(text) if "httpRequest" in line]


def request_line(text: str) -> dict:
    """The request line of output that holds exactly one."""
    [line] = request_lines(text)
    return line
