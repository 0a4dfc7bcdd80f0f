"""The test kit (``tests/support``) stays self-contained, so that the benchmarks can load it by file
path as the package ``testkit`` without importing the test suite (``bench/_common.py``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.conftest import REPO

SUPPORT = REPO / "tests" / "support"


def _absolute_imports_of_tests(path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tests":
            found.append(f"{path.relative_to(REPO)}:{node.lineno} from {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"{path.relative_to(REPO)}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "tests"]
    return found


def test_the_kit_and_the_benchmarks_never_import_the_tests_package():
    offenders = [line for path in sorted(SUPPORT.rglob("*.py")) for line in _absolute_imports_of_tests(path)]
    offenders += [line for path in sorted((REPO / "bench").glob("*.py")) for line in _absolute_imports_of_tests(path)]
    assert not offenders, "\n".join(offenders)


def test_the_benchmarks_load_the_kit_without_the_tests_package():
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "import _common;"
        "from testkit.webui import WebUIServer; from testkit.load import StoreAudit; from testkit.servers import free_port;"
        "from testkit.ibkr_gateway import IBKRGateway; from testkit.airflow_env import AirflowHome;"
        "server = WebUIServer(health_delay_s=0).start(); server.seed_symbol('AAPL'); server.stop();"
        "print(json.dumps({'tests': sorted(m for m in sys.modules if m == 'tests' or m.startswith('tests.')),"
        " 'symbols': [s['symbol'] for s in server.symbols()]}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(REPO / "bench")], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"tests": [], "symbols": ["AAPL"]}
