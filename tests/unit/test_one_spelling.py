"""One spelling for every name the code shares: tag names only through ``records.Tag``, settings
only through ``tradeflow.settings``. An alias or a literal is how a reader and a writer drift apart
(a tag read under one spelling and written under another is never found)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO
from tradeflow.runs.records import Tag

SOURCES = [p for top in ("tradeflow", "review_agents", "entrypoints", "dags", "deploy")
           for p in sorted((REPO / top).rglob("*.py"))]
RECORDS = REPO / "tradeflow" / "runs" / "records.py"
SETTINGS = REPO / "tradeflow" / "settings.py"


def _tag_names() -> set[str]:
    """Every concrete tag name ``Tag`` declares (templates left out: they are formatted)."""
    return {value for name, value in vars(Tag).items()
            if name.isupper() and isinstance(value, str) and "{" not in value}


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"


def test_no_tag_aliases_anywhere():
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.startswith("TAG_") for t in node.targets):
                found.append(_where(path, node))
            if isinstance(node, ast.ImportFrom) and any(alias.name.startswith("TAG_") for alias in node.names):
                found.append(_where(path, node))
    assert not found, f"TAG_* aliases (spell it records.Tag.X): {found}"


def test_tag_names_are_written_only_in_records():
    names = _tag_names()
    found = []
    for path in SOURCES:
        if path == RECORDS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{_where(path, node)} {node.value!r}")
    assert not found, f"tag names spelled as literals (use records.Tag): {found}"


def test_the_checks_see_a_literal():
    """The scan above finds what it looks for (a test that cannot fail proves nothing)."""
    tree = ast.parse(f"client.set_tag(run_id, {Tag.SYMBOL!r}, 'AAPL')")
    assert any(isinstance(n, ast.Constant) and n.value in _tag_names() for n in ast.walk(tree))


def test_tradeflow_settings_are_read_only_through_the_settings_model():
    found = []
    for path in SOURCES:
        if path == SETTINGS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_read = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                       and node.func.attr in {"get", "getenv", "pop"} and node.args)
            key = node.args[0] if is_read else node.slice if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) else None
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith("TRADEFLOW_"):
                found.append(f"{_where(path, node)} {key.value}")
    assert not found, f"TRADEFLOW_* read from the environment outside tradeflow/settings.py: {found}"
