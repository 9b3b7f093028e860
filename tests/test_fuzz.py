"""schemathesis against the live function (functions-framework, gunicorn) with openapi.yaml
and every check: no 5xx, every status, header and body as the spec says, schema-valid input
accepted and invalid input refused, and any method the spec does not list a 405 with Allow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import hypothesis.internal.conjecture.optimiser  # noqa: F401 - see CURSORS
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools import seed
from lib.listing.paging import decode_cursor, encode_cursor
from tests.conftest import ROOT, run_python
from tests.report import figure

SPEC = ROOT / "openapi.yaml"
MAX_EXAMPLES = 150  # per operation: about 600 requests
MAX_SECONDS = 20


PARAMETERS = yaml.safe_load(SPEC.read_text())["paths"]["/"]["get"]["parameters"]
CURSOR_PATTERN = next(p for p in PARAMETERS if p["name"] == "cursor")["schema"]["pattern"]
# Built now, at collection, with the optimiser imported above: a module hypothesis imports
# lazily during a test is rewritten by pytest (ast.parse), and on CPython 3.11.0-3.11.7 and
# 3.12.0-3.12.1 an ast.parse while another thread parses too can raise "SystemError: AST
# constructor recursion depth mismatch" (python/cpython#106905, fixed in 3.11.8 and 3.12.2).
CURSORS = st.from_regex(CURSOR_PATTERN, fullmatch=True)
CURSORS.validate()  # a lazy strategy: this imports its module


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(min_value=0, max_value=10**20 - 1), st.data())
def test_the_spec_cursor_pattern_is_exactly_the_cursors_issued(last_id, data):
    """A fuzzer trusts the spec: every string it allows must be a cursor we accept."""
    assert re.fullmatch(CURSOR_PATTERN, encode_cursor(last_id))
    assert decode_cursor(encode_cursor(last_id)) == min(last_id, 2**63 - 1)
    decode_cursor(data.draw(CURSORS))  # never a 400


@pytest.mark.slow
def test_the_property_test_imports_nothing_while_it_runs():
    """What it needs is imported at collection, so no ast.parse runs under it (see CURSORS)."""
    probe = (
        "import sys\n"
        "from tests import test_fuzz\n"
        "before = set(sys.modules)\n"
        "test_fuzz.test_the_spec_cursor_pattern_is_exactly_the_cursors_issued()\n"
        "print(*sorted(set(sys.modules) - before))"
    )
    assert run_python(probe, {}).split() == []


@pytest.mark.slow
def test_schemathesis_finds_nothing(admin, serve, tmp_path: Path):
    seed.seed_users(admin, 30, progress=False)
    served = serve()
    st_cli = Path(sys.executable).parent / "st"
    run = subprocess.run(
        [
            str(st_cli),
            "run",
            str(SPEC),
            "--url",
            served.base,
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--max-time",
            str(MAX_SECONDS),
            "--seed",
            "10",
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ],
        cwd=tmp_path,  # schemathesis keeps its example database in the working directory
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 60,
    )
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    figure(f"schemathesis: {summary.group(0) if summary else run.stdout[-300:]}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert summary and int(summary.group(1)) >= 200  # it did generate requests
    assert "Traceback" not in served.log.read_text(errors="replace")
