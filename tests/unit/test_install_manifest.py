"""scripts/install_trademaster.sh verifies an upstream tree that is not a git checkout against the
manifest of the pinned commit's file digests (scripts/trademaster-c1c4838.sha256)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

MANIFEST = REPO / "scripts" / "trademaster-c1c4838.sha256"
VERIFY = REPO / "scripts" / "verify_source_tree.sh"


def _entries(manifest: Path) -> dict[str, str]:
    lines = [line for line in manifest.read_text().splitlines() if line and not line.startswith("#")]
    return {path: digest for digest, path in (line.split("  ", 1) for line in lines)}


def test_manifest_covers_what_the_script_installs():
    entries = _entries(MANIFEST)
    assert "c1c4838b518a85ecec6d4ded40be8815ade5f41d" in MANIFEST.read_text().splitlines()[0]
    pinned = re.search(r"^TM_COMMIT=(\w+)$", (REPO / "scripts" / "install_trademaster.sh").read_text(), re.M)
    assert pinned and MANIFEST.name == f"trademaster-{pinned.group(1)[:7]}.sha256"
    assert len(entries) == 150 and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in entries.values())
    assert {"setup.py", "README.md", "LICENSE"} <= set(entries)
    assert "trademaster/environments/algorithmic_trading/environment.py" in entries
    assert all(p.startswith("trademaster/") or p in {"setup.py", "README.md", "LICENSE"} for p in entries)
    assert not any(p.endswith(".ipynb") for p in entries)


def _tree(root: Path) -> Path:
    """A small tree and its manifest (the real upstream is not here in CI)."""
    files = {"setup.py": b"from setuptools import setup\n", "pkg/__init__.py": b"", "pkg/core.py": b"X = 1\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = root.parent / "m.sha256"
    manifest.write_text("# test\n" + "".join(f"{hashlib.sha256(d).hexdigest()}  {r}\n" for r, d in files.items()))
    return manifest


def _verify(tree: Path, manifest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(VERIFY), str(tree), str(manifest), "pkg"], capture_output=True, text=True)


def test_verifier_names_changed_missing_and_added_files(tmp_path):
    tree = tmp_path / "src"
    manifest = _tree(tree)
    (tree / "pkg" / "__pycache__").mkdir()
    (tree / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"cache")  # an earlier install
    ok = _verify(tree, manifest)
    assert ok.returncode == 0 and "verified: 3 files" in ok.stdout, ok.stderr
    (tree / "pkg" / "core.py").write_text("X = 2\n")
    (tree / "pkg" / "evil.py").write_text("import os\n")
    (tree / "setup.py").unlink()
    bad = _verify(tree, manifest)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "missing: setup.py" in bad.stderr and "changed: pkg/core.py" in bad.stderr
    assert "not upstream: pkg/evil.py" in bad.stderr


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="install_trademaster.sh needs Python 3.11")
def test_install_refuses_a_plain_tree_that_is_not_the_pinned_commit(tmp_path):
    tree = tmp_path / "TradeMaster"
    env_py = tree / "trademaster" / "environments" / "algorithmic_trading" / "environment.py"
    env_py.parent.mkdir(parents=True)
    env_py.write_text("# not upstream\n")
    venv = tmp_path / "venv"
    result = subprocess.run(["bash", str(REPO / "scripts" / "install_trademaster.sh")], capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "TM_SRC": str(tree), "TM_VENV": str(venv), "PYTHON": sys.executable})
    assert result.returncode == 1
    assert "refusing to install" in result.stderr and "not upstream TradeMaster @ c1c4838b518a" in result.stderr
    assert "changed: trademaster/environments/algorithmic_trading/environment.py" in result.stderr
    assert not venv.exists()  # refused before any work


def test_a_real_upstream_tree_verifies_when_present():
    tree = Path(os.environ.get("TM_SRC", Path.home() / ".cache" / "tradeflow" / "TradeMaster-c1c4838"))
    if not (tree / "trademaster").is_dir():
        pytest.skip(f"no upstream TradeMaster tree at {tree} (scripts/install_trademaster.sh makes one)")
    result = subprocess.run(["bash", str(VERIFY), str(tree), str(MANIFEST), "trademaster"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
