"""The layers, read from the code: only lib/http/ imports flask or werkzeug, nothing outside
it imports lib/http/, the core never climbs back up, and no module is too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
EDGE_ONLY = ("flask", "werkzeug", "functions_framework", "gunicorn")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def modules(under: Path = LIB) -> list[Path]:
    return sorted(under.rglob("*.py"))


def test_only_the_edge_imports_the_web_framework():
    outside = {
        str(p.relative_to(ROOT)): sorted(i for i in imports(p) if i.split(".")[0] in EDGE_ONLY)
        for p in modules()
        if p.parent.name != "http"
    }
    assert {p: i for p, i in outside.items() if i} == {}


def test_nothing_outside_the_edge_imports_it():
    climbing = {
        str(p.relative_to(ROOT)): sorted(i for i in imports(p) if i.startswith("lib.http"))
        for p in modules()
        if p.parent.name != "http"
    }
    assert {p: i for p, i in climbing.items() if i} == {}


def test_the_core_does_not_import_the_connector_paths_or_the_edge():
    """lib/listing/ reads PostgreSQL through lib/postgres/ only."""
    for path in modules(LIB / "listing"):
        reached = {i for i in imports(path) if i.startswith("lib.")}
        assert not {i for i in reached if i.startswith(("lib.http", "lib.connectors"))}, path


def test_a_handful_of_modules_at_the_top_and_none_too_long():
    top = [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 6, top
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}
