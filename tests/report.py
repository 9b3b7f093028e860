"""Figures the tests measure, printed at the end of the run (pytest hides a passing test's
output). One module shared by conftest and the tests, so they see the same lists."""

from __future__ import annotations

FIGURES: list[str] = []
CHAOS: list[dict] = []


def figure(line: str) -> None:
    FIGURES.append(line)


def chaos_table() -> str:
    """The table for docs/operations.md, "Faults"."""
    if not CHAOS:
        return ""
    keys = list(CHAOS[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in CHAOS]
    return "\n".join(lines)
