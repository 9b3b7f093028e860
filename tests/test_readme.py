"""The README is a map and docs/ the territory: both stay true to the code they describe.

Links and anchors resolve, the `make` targets named exist, every environment variable the
function reads is documented in docs/configuration.md (and nothing documented there as the
function's is gone), the first screen says how to run, test, deploy and configure, the deploy
command agrees with cloudbuild.yaml, and the Layout names every module. No server, no
network: plain file reads.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
CHANGELOG = ROOT / "CHANGELOG.md"
FIRST_SCREEN = 40  # lines
MAX_README_LINES = 160  # a map: detail belongs in docs/
# Read by functions-framework (gunicorn) rather than by lib/, yet the function's settings.
FRAMEWORK_VARIABLES = {"THREADS", "CLOUD_RUN_TIMEOUT_SECONDS", "GUNICORN_LOG_LEVEL", "PORT"}
# Keys of a WSGI environ, which lib/ reads from requests: not environment variables.
_WSGI_KEY = re.compile(r"(?:HTTP|SERVER|REMOTE|REQUEST|PATH|QUERY|CONTENT|SCRIPT)_[A-Z_]+")
_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")


def docs() -> list[Path]:
    """README.md and every page of docs/: the documents that describe what is true now."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def linked_documents() -> list[Path]:
    """docs() and CHANGELOG.md: history may name what is gone, but its links must resolve."""
    return [*docs(), *([CHANGELOG] if CHANGELOG.exists() else [])]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- Markdown, as far as these checks need it ----------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


@cache
def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and code spans (where links and headings live)."""
    return _CODE_SPAN.sub(" ", _FENCE.sub("", markdown))


def code(markdown: str) -> list[str]:
    """Every fenced code block (line by line) and code span."""
    pieces = []
    for block in _FENCE.finditer(markdown):
        pieces.extend(block.group(0).splitlines()[1:-1])
    pieces.extend(m.group(2) for m in _CODE_SPAN.finditer(_FENCE.sub("", markdown)))
    return pieces


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for match in _HEADING.finditer(_FENCE.sub("", text(path))):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return frozenset(out)


def links(path: Path) -> list[str]:
    return [m.group(1) for m in _LINK.finditer(prose(text(path)))]


# --- Links ---------------------------------------------------------------------------------


def test_the_checks_see_the_documents():
    assert README.exists() and CONFIGURATION.exists()
    assert len(docs()) > 5
    assert any(link.startswith("docs/") for link in links(README))
    assert slug("Sizing the pool against `max_connections`") == (
        "sizing-the-pool-against-max_connections"
    )
    assert slug("Operations: logs, /healthz, faults") == "operations-logs-healthz-faults"


@pytest.mark.parametrize("path", linked_documents(), ids=_name)
def test_every_relative_link_and_anchor_resolves(path):
    broken = []
    for link in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto: ...: not ours to check
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading #{anchor} in {_name(file)}")
    assert not broken, f"{_name(path)}: " + "; ".join(broken)


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in links(README)}
    missing = [_name(p) for p in sorted(DOCS.rglob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md's table of contents lacks {missing}"


_REPO_PATH = re.compile(r"(?<![\w./~-])(?:lib|tests|devtools|bench|sql|docs|\.ci)/[\w./*-]*")


@pytest.mark.parametrize("path", docs(), ids=_name)
def test_every_file_named_in_code_exists(path):
    """`lib/postgres/database.py` in a sentence is a promise too: a module renamed or split must be
    renamed here as well."""
    missing = set()
    for piece in code(text(path)):
        for name in _REPO_PATH.findall(piece):
            name = name.rstrip("./")
            if not (list(ROOT.glob(name)) if "*" in name else (ROOT / name).exists()):
                missing.add(name)
    assert not missing, f"{_name(path)} names files that do not exist: {sorted(missing)}"


# --- make targets --------------------------------------------------------------------------

_RULE = re.compile(r"^([A-Za-z0-9_.%/-]+(?:[ \t]+[A-Za-z0-9_.%/-]+)*)[ \t]*::?(?!=)", re.M)
# `make X` at the start of a command (the line, `$ `, after `&&`, `;`, `|`), after any
# VAR=value assignments; `apt-get install make python3-venv` names no target.
_ASSIGNMENT = r"[A-Z_][A-Z0-9_]*=(?:'[^']*'|\"[^\"]*\"|\S+)\s+"
_MAKE = re.compile(
    rf"(?:^|[;&|]\s*|\$\s+)(?:{_ASSIGNMENT})*make\s+(?:{_ASSIGNMENT})*([a-z][\w-]*)", re.M
)


@cache
def makefile_targets() -> frozenset[str]:
    return frozenset(
        target
        for match in _RULE.finditer((ROOT / "Makefile").read_text())
        for target in match.group(1).split()
        if not target.startswith(".")
    )


def make_targets_named(path: Path) -> set[str]:
    return {m.group(1) for piece in code(text(path)) for m in _MAKE.finditer(piece.strip())}


def test_the_makefile_parser_finds_the_targets():
    assert {"run", "test", "lint", "clean"} <= makefile_targets()
    assert "PYTHON" not in makefile_targets()  # PYTHON ?= python3 is no rule
    assert make_targets_named(README) >= {"run", "test"}


@pytest.mark.parametrize("path", docs(), ids=_name)
def test_every_make_target_named_exists(path):
    unknown = make_targets_named(path) - makefile_targets()
    assert not unknown, f"{_name(path)} names make targets the Makefile lacks: {sorted(unknown)}"


# --- Environment variables -----------------------------------------------------------------


def _is_environment(node: ast.AST) -> bool:
    """`os.environ`, or a mapping the code calls `env`/`environ` (config's parameter)."""
    source = ast.unparse(node)
    return source in ("os.environ", "env", "environ", "environment")


def _literal(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def variables_read(tree: ast.AST) -> set[str]:
    """Names read from the environment: `env.get("X")`, `env["X"]`, `os.getenv("X")`,
    `"X" in env`, helpers given the environment and a name (`_int(env, "X", ...)`), and every
    variable a ConfigError names."""
    names: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            first = _literal(node.args[0]) if node.args else None
            if (
                isinstance(func, ast.Attribute)
                and func.attr in ("get", "pop", "setdefault")
                and _is_environment(func.value)
            ):
                names.add(first)
            callee = ast.unparse(func)
            if callee in ("os.getenv", "getenv") or callee.endswith("ConfigError"):
                names.add(first)
            for arg, after in zip(node.args, node.args[1:], strict=False):
                if _is_environment(arg):
                    names.add(_literal(after))
        elif isinstance(node, ast.Subscript) and _is_environment(node.value):
            names.add(_literal(node.slice))
        elif (
            isinstance(node, ast.Compare)
            and any(isinstance(o, ast.In) for o in node.ops)
            and any(_is_environment(c) for c in node.comparators)
        ):
            names.add(_literal(node.left))
    return {n for n in names if n and _VARIABLE.fullmatch(n) and not _WSGI_KEY.fullmatch(n)}


class RecordingEnvironment(Mapping[str, str]):
    """An environment that remembers every name looked up in it, found or not."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.asked = values, set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


# One environment per connection path; everything else is left to its default.
ENVIRONMENTS = (
    {"DATABASE_URL": "postgresql://reader:secret@127.0.0.1:5432/app"},
    {"INSTANCE_CONNECTION_NAME": "p:r:i", "DB_NAME": "d", "DB_USER": "u", "DB_PASS": "x"},
)


def variables_loaded() -> set[str]:
    """What `config.load` looks up, names built at run time (`USERS_COLUMNS`) included."""
    from lib import config  # no network: load() only parses and validates

    asked: set[str] = set()
    for values in ENVIRONMENTS:
        env = RecordingEnvironment(values)
        config.load(env)
        asked |= env.asked
    return {name for name in asked if _VARIABLE.fullmatch(name)}


@cache
def function_variables() -> frozenset[str]:
    """Every variable the deployed code reads: main.py and every module under lib/, read as
    source, and what configuration loading asks for."""
    found = variables_loaded()
    for path in [ROOT / "main.py", *sorted((ROOT / "lib").rglob("*.py"))]:
        found |= variables_read(ast.parse(path.read_text(), filename=str(path)))
    return frozenset(found)


def documented(path: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"`([A-Z][A-Z0-9_]*)`", text(path))}


def test_the_scanner_finds_what_the_code_reads():
    sample = (
        'import os\nenv = os.environ\nenv.get("A_1"); env["B"]; os.environ.get("C")\n'
        '_int(env, "D", 5); "E" in env; os.getenv("F"); ConfigError("G", "bad")\n'
        'request.environ.get("SERVER_PROTOCOL"); env.get("not_a_variable")\n'
    )
    assert variables_read(ast.parse(sample)) == {"A_1", "B", "C", "D", "E", "F", "G"}
    # If these vanish the scanner has lost track of how the code reads its environment.
    assert {"DATABASE_URL", "INSTANCE_CONNECTION_NAME", "DB_POOL_SIZE"} <= function_variables()
    assert {"USERS_COLUMNS", "DB_IAM_USER", "DB_STATEMENT_TIMEOUT_MS"} <= variables_loaded()


def test_every_variable_the_function_reads_is_in_configuration_md():
    missing = sorted(function_variables() - documented(CONFIGURATION))
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_configuration_md_documents_no_setting_the_function_lacks():
    """The function's tables (all but local tooling): every variable there is read by lib/
    or by functions-framework, so a removed setting cannot linger in the docs."""
    function_part = text(CONFIGURATION).split("## Local tooling")[0]
    rows = [line for line in function_part.splitlines() if line.startswith("|")]
    named = {m for row in rows for m in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}
    assert named, "no variables found in docs/configuration.md's tables"
    stale = sorted(named - function_variables() - FRAMEWORK_VARIABLES)
    assert not stale, f"docs/configuration.md documents variables nothing reads: {stale}"


@pytest.mark.parametrize("path", docs(), ids=_name)
def test_every_db_variable_mentioned_exists(path):
    stale = set(re.findall(r"\bDB_[A-Z][A-Z0-9_]*", text(path))) - function_variables()
    assert not stale, f"{_name(path)} mentions settings the function does not read: {stale}"


# --- The README's shape --------------------------------------------------------------------


def test_the_first_screen_says_how_to_run_test_deploy_and_configure():
    first = "\n".join(text(README).splitlines()[:FIRST_SCREEN])
    for needed in ("make run", "make test", "gcloud functions deploy", "docs/configuration.md"):
        assert needed in first, f"README.md's first {FIRST_SCREEN} lines lack {needed!r}"


def test_the_readme_stays_a_map():
    lines = len(text(README).splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines: move detail into docs/ (at most {MAX_README_LINES})"
    )


def deploy_command(markdown: str) -> list[str]:
    for block in _FENCE.finditer(markdown):
        command = block.group(0).replace("\\\n", " ")
        for line in command.splitlines():
            if line.strip().startswith("gcloud functions deploy"):
                return line.split()
    raise AssertionError("no `gcloud functions deploy` command in a code block")


def test_the_deploy_command_agrees_with_cloudbuild():
    """Each flag Cloud Build deploys with is in the README's command: literally when it is
    fixed, by name when Cloud Build fills it from a substitution."""
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    [step] = [s for s in build["steps"] if s.get("id") == "deploy"]
    readme = deploy_command(text(README))
    assert readme[1:4] == step["args"][:3]  # functions deploy users
    flag_names = {arg.split("=")[0] for arg in readme}
    missing = [
        arg
        for arg in step["args"]
        if arg.startswith("--")
        and (arg.split("=")[0] not in flag_names if "${" in arg else arg not in readme)
    ]
    assert not missing, f"README.md's deploy command lacks {missing} (cloudbuild.yaml has them)"


def test_the_layout_names_every_module_and_directory():
    readme = text(README)
    lib = ROOT / "lib"
    modules = [p for p in lib.glob("*.py") if p.name != "__init__.py"]
    packages = [p for p in lib.iterdir() if p.is_dir() and any(p.glob("*.py"))]
    missing = [
        f"lib/{p.name}" for p in [*modules, *packages] if not re.search(rf"lib/{p.name}\b", readme)
    ]
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    directories = [
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and p.name not in ignored
    ]
    missing += [f"{d}/" for d in directories if f"`{d}/`" not in readme]
    assert not missing, f"README.md's Layout lacks {missing}"
