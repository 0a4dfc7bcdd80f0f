"""The library's import direction, checked: no module-level import cycle anywhere, and the layer
contract in pyproject.toml (``[tool.importlinter]``: flow order, drivers never import stages)."""

from __future__ import annotations

import subprocess
import sys

import grimp
import pytest

from tests.conftest import REPO

PACKAGES = ("tradeflow", "review_agents", "entrypoints")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(root: str) -> None:  # iterative: the graph is deep enough to matter
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_no_module_imports_itself_back(graph):
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_cycle_introduced_is_found(graph):
    """The check above can fail: one import against the flow makes a cycle it reports."""
    graph.add_import(importer="tradeflow.config", imported="tradeflow.settings")
    try:
        assert ["tradeflow.config", "tradeflow.settings"] in import_cycles(graph)
    finally:
        graph.remove_import(importer="tradeflow.config", imported="tradeflow.settings")


def test_the_layer_contract_is_kept():
    # its own interpreter: import-linter reconfigures logging, which would silence later tests' caplog
    check = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                            "sys.exit(lint_imports_command())", "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, "broken import contracts (pyproject.toml [tool.importlinter]):\n" + check.stdout[-3000:]
