"""What gets deployed: the upload set, the pinned requirements, the Cloud Build pipeline."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_python

# lib/ is exactly what is deployed: every module in it, and nothing else of ours.
RUNTIME_FILES = {
    "main.py",
    "requirements.txt",
    *(str(path.relative_to(ROOT)) for path in (ROOT / "lib").glob("*.py")),
}


def uploaded() -> set[str]:
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud is not installed")
    result = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


@pytest.mark.slow
def test_gcloudignore_uploads_exactly_the_runtime_files():
    assert uploaded() == RUNTIME_FILES


@pytest.mark.slow
def test_every_module_main_imports_is_uploaded(postgres):
    probe = (
        "import sys, main\n"
        "for m in list(sys.modules.values()):\n"
        "    print(getattr(m, '__file__', None) or '')"
    )
    stdout = run_python(probe, {"DATABASE_URL": postgres.admin_url})
    ours = {
        str(path.relative_to(ROOT))
        for path in map(Path, stdout.split())
        if path.is_relative_to(ROOT) and not path.is_relative_to(sys.prefix)  # any venv name
    }
    assert ours <= RUNTIME_FILES, ours - RUNTIME_FILES


def test_runtime_requirements_are_pinned_and_minimal():
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", line) for line in lines), (
        lines
    )
    names = {line.split("==")[0].lower() for line in lines}
    assert names == {
        "functions-framework",
        "sqlalchemy",
        "pg8000",
        "cloud-sql-python-connector",
        "google-cloud-alloydb-connector",  # imported only with ALLOYDB_INSTANCE_URI
    }


def deploy_step() -> tuple[dict, list[str]]:
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    [step] = [s for s in build["steps"] if s.get("id") == "deploy"]
    return build, step["args"]


def test_cloudbuild_runs_the_tests_before_deploying():
    build, _ = deploy_step()
    ids = [s["id"] for s in build["steps"]]
    assert ids.index("test") < ids.index("deploy")
    test = build["steps"][ids.index("test")]
    assert [test["entrypoint"], *test["args"]] == ["make", "test"]


def test_cloudbuild_deploys_a_private_gen2_python312_function():
    _, args = deploy_step()
    assert args[:3] == ["functions", "deploy", "users"]
    for flag in (
        "--gen2",
        "--runtime=python312",
        "--entry-point=users",
        "--trigger-http",
        "--no-allow-unauthenticated",
    ):
        assert flag in args
    assert not any(a == "--allow-unauthenticated" for a in args)
    assert "--set-secrets=DB_PASS=${_DB_PASS_SECRET}:latest" in args
    env = next(a for a in args if a.startswith("--set-env-vars="))
    assert "DB_PASS" not in env  # the password only ever comes from Secret Manager


def test_cloudbuild_concurrency_threads_and_pool_agree():
    build, args = deploy_step()
    subs = build["substitutions"]
    env = dict(
        pair.split("=", 1)
        for pair in next(a for a in args if a.startswith("--set-env-vars="))
        .removeprefix("--set-env-vars=")
        .split(",")
    )
    assert "--concurrency=${_CONCURRENCY}" in args and env["THREADS"] == "${_CONCURRENCY}"
    assert env["DB_POOL_SIZE"] == "${_POOL_SIZE}" and env["DB_MAX_OVERFLOW"] == "0"
    assert int(subs["_CONCURRENCY"]) <= int(subs["_POOL_SIZE"])  # no request waits for the pool
    # The fleet fits a 25-connection db-f1-micro with Cloud Run's 2x burst overshoot.
    assert 2 * int(subs["_MAX_INSTANCES"]) * int(subs["_POOL_SIZE"]) <= 25 - 3
