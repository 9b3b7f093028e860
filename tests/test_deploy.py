"""What gets deployed: the upload set, the pinned requirements, the Cloud Build pipeline."""

from __future__ import annotations

import functools
import os
import re
import shlex
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
    *(str(path.relative_to(ROOT)) for path in (ROOT / "lib").rglob("*.py")),
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


# --- Cloud Build's upload, VPC egress, the first-deploy checklist --------------------------

DEPLOYING = ROOT / "docs" / "deploying.md"
_FENCE = re.compile(r"^[ \t]*```sh\n(.*?)^\s*```", re.M | re.S)


def commands(markdown: str) -> list[str]:
    """Every shell command in the ```sh blocks, continuation lines joined."""
    return [
        line.strip()
        for block in _FENCE.finditer(markdown)
        for line in block.group(1).replace("\\\n", " ").splitlines()
        if line.strip()
    ]


def submit_command() -> list[str]:
    [command] = [c for c in commands(DEPLOYING.read_text()) if c.startswith("gcloud builds submit")]
    return shlex.split(command)


@functools.cache
def gcloud_python() -> tuple[str, str]:
    """gcloud's own Python and its SDK root, to run its code as `gcloud builds submit` does."""
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud is not installed")
    info = subprocess.run(
        ["gcloud", "info", "--format=value(basic.python_location,installation.sdk_root)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    return info[0], info[1]


def build_upload(source: Path) -> set[str]:
    """The files `gcloud builds submit` uploads from `source` with the documented
    --ignore-file: gcloud's own Snapshot, which picks them with its gcloudignore chooser."""
    [ignore_file] = [a.split("=", 1)[1] for a in submit_command() if a.startswith("--ignore-file=")]
    python, sdk = gcloud_python()
    chooser = (
        "import sys\n"
        f"sys.path[:0] = ['{sdk}/lib', '{sdk}/lib/third_party']\n"
        "from googlecloudsdk.api_lib.cloudbuild.snapshot import Snapshot\n"
        "print('\\n'.join(Snapshot('.', ignore_file=sys.argv[1]).files))"
    )
    listed = subprocess.run(
        [python, "-c", chooser, ignore_file],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return set(listed.split())


def git_files() -> set[str]:
    """What git holds here: tracked files, and new ones not ignored (this change's own)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return {name for name in listed.split() if (ROOT / name).exists()}


@pytest.mark.slow
def test_the_documented_build_uploads_what_git_holds_and_nothing_local():
    upload = build_upload(ROOT)
    assert upload == git_files()
    assert ".gcloudignore" in upload  # the deploy step's --source=. still uploads by it
    assert not any(name.startswith((".venv", ".devdb", ".env")) for name in upload)


@pytest.mark.slow
def test_make_test_runs_in_a_copy_of_exactly_the_build_upload(tmp_path):
    """What Cloud Build's test step gets is enough for `make test` (here its inner loop and
    this virtualenv, to stay quick), and the deploy step that follows still uploads only
    the function, whatever the tests left behind."""
    copy = tmp_path / "workspace"
    for name in build_upload(ROOT):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    venv = ["-o", f"{sys.prefix}/.installed", f"VENV={sys.prefix}"]  # this venv, as it is
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "test",
            *venv,
            "PYTEST_ARGS=-q -m 'not slow'",
        ],
        cwd=copy,
        env={**env, "DOCKER_HOST": "unix:///nonexistent"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)
    function = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert set(function) == RUNTIME_FILES


def test_the_build_tests_on_the_deploy_runtimes_python():
    build, args = deploy_step()
    [test] = [s for s in build["steps"] if s["id"] == "test"]
    image = re.fullmatch(r"python:(\d+)\.(\d+)", test["name"])
    assert image, test["name"]
    assert f"--runtime=python{image[1]}{image[2]}" in args
    assert "DOCKER_HOST=unix:///nonexistent" in test["env"]  # the embedded server, as CI


def documented_deploys() -> list[tuple[str, list[str]]]:
    """Every `gcloud functions deploy` of the documents, and Cloud Build's with its defaults."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for command in commands(path.read_text()):
            if command.startswith("gcloud functions deploy"):
                found.append((str(path.relative_to(ROOT)), shlex.split(command)))
    build, args = deploy_step()
    defaults = {f"${{{k}}}": str(v) for k, v in build["substitutions"].items()}
    filled = [re.sub(r"\$\{_\w+\}", lambda m: defaults[m[0]], a) for a in args]
    return [*found, ("cloudbuild.yaml", filled)]


def test_every_deploy_with_a_private_ip_carries_vpc_egress():
    """A Cloud Run function reaches a private IP only through VPC egress."""
    deploys = documented_deploys()
    assert {name for name, _ in deploys} >= {"README.md", "docs/deploying.md", "cloudbuild.yaml"}
    for name, args in deploys:
        env = next(a for a in args if a.startswith("--set-env-vars="))
        if "IP_TYPE=private" in env or "IP_TYPE=psc" in env:
            assert any(a.startswith("--vpc-connector=") and len(a) > 16 for a in args), name
            assert "--egress-settings=private-ranges-only" in args, name


def gcloud_commands(command: str) -> list[list[str]]:
    """The gcloud invocations in a shell line: itself, after a pipe, or inside $(...)."""
    found = []
    for match in re.finditer(r"(?:^|\$\(|\|\s*)(gcloud\s.*?)(?=\)(?:\s|\"|$)|\s\||$)", command):
        found.append(shlex.split(match.group(1)))
    return found


@functools.cache
def gcloud_help(*words: str) -> tuple[str, str]:
    """The command gcloud resolves `words` to (its NAME line), and its help text."""
    result = subprocess.run(
        ["gcloud", *words, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "PAGER": "cat"},
    )
    assert result.returncode == 0, f"gcloud {' '.join(words)} --help: {result.stderr[-500:]}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    name = re.search(r"^NAME\n\s+(gcloud[\w -]*?) - ", text, re.M)
    assert name, text[:300]
    return name.group(1), text


@pytest.mark.slow
def test_every_checklist_command_uses_flags_the_installed_gcloud_has():
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud is not installed")
    invocations = [g for c in commands(DEPLOYING.read_text()) for g in gcloud_commands(c)]
    assert len(invocations) >= 20  # the checklist and the deploys
    unknown = []
    for args in invocations:
        words = [a for a in args[1:] if not a.startswith("-")]
        command, text = gcloud_help(*words)
        for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
            negated = flag.startswith("--no-") and f"--[no-]{flag[5:]}" in text
            if not (negated or re.search(rf"{re.escape(flag)}\b", text)):
                unknown.append(f"{command}: {flag}")
    assert not unknown, unknown
