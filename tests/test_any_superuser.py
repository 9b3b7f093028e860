"""TEST_DATABASE_URL may name any superuser and any database: the tests that build their
own URLs (the TLS front, sslmode, the Cloud SQL connector's stand-in, host lists, logins)
run against one whose name, password and database are nothing like postgres/postgres/postgres
(on main before this, 14 of these 25 failed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

USER, PASSWORD, DATABASE = "suite admin", "p@ss:w/rd?#%", "suite_db"
TESTS = [
    "tests/test_tls.py",
    "tests/test_config.py::test_sslmode_against_a_server_without_tls",
    "tests/test_cloud_sql.py::test_password_login_through_the_connector",
    "tests/test_connect_url.py::test_a_dead_first_host_is_skipped",
    "tests/test_connect_url.py::test_misconfigurations_are_500_naming_the_fix",
]


@pytest.fixture
def other_superuser(admin, postgres):
    cursor = admin.cursor()
    cursor.execute(f"CREATE ROLE \"{USER}\" SUPERUSER LOGIN PASSWORD '{PASSWORD}'")
    cursor.execute(f'CREATE DATABASE {DATABASE} OWNER "{USER}"')
    yield postgres.url(USER, PASSWORD, database=DATABASE)
    cursor.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
    cursor.execute(f'DROP ROLE "{USER}"')


@pytest.mark.slow
def test_the_suite_runs_against_any_superuser(other_superuser):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=ROOT,
        env={**os.environ, "TEST_DATABASE_URL": other_superuser},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
