"""A model logged before the package fold still loads and acts after it.

The fold (issue 21) moved most of ``tradeflow``'s modules. A registered model carries the code that
logged it (``code_paths``) and ``model_code.py`` names only ``tradeflow.model``, so a version
trained by the tree before the move must load and predict in the tree after it. Both halves run as
fresh interpreters, as they do in production (training in one process, inference in another).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
from io import BytesIO

import pytest

from tests.conftest import REPO
from tests.support.stores import sqlite_store

pytestmark = pytest.mark.slow

#: main before the fold: the tree whose model the folded tree must still load
BEFORE_FOLD = "695649e"


def _tree_at(commit: str, into) -> None:
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"commit {commit} is not in this clone (shallow?): {exc.stderr.decode().strip()[:200]}")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        # our own git archive; the "data" filter exists from Python 3.11.4 (a CI box may have 3.11.2)
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def test_a_model_logged_before_the_fold_loads_and_predicts_after_it(tmp_path):
    old = tmp_path / "before_fold"
    _tree_at(BEFORE_FOLD, old)
    uri = sqlite_store(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRADEFLOW_"))}
    env |= {"MLFLOW_TRACKING_URI": uri, "PATH": f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"}

    trained = subprocess.run(
        [sys.executable, "-m", "entrypoints.train_backtest", "--symbol", "AAPL", "--epochs", "1",
         "--data_source", "csv:data/trademaster/dj30_2020_2021.csv"],
        cwd=old, env={**env, "PYTHONPATH": str(old)}, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "registered as trademaster_AAPL v1" in trained.stdout, trained.stdout[-2000:]

    load = textwrap.dedent("""
        import json, sys
        import tradeflow.runs.records  # the folded tree is the one imported first
        from mlflow.models import Model
        from tradeflow.model import load_logged_model
        from mlflow.artifacts import download_artifacts

        uri = "models:/trademaster_AAPL/1"
        local = download_artifacts(uri)
        example = Model.load(local).load_input_example(local)
        out = load_logged_model(uri).predict(example)
        print(json.dumps({"columns": list(out.columns), "suggestion": str(out["suggestion"].iloc[0]),
                          "folded": hasattr(tradeflow.runs.records, "Tag")}))
    """)
    served = subprocess.run([sys.executable, "-c", load], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    result = __import__("json").loads(served.stdout.strip().splitlines()[-1])
    assert result["folded"] and result["suggestion"] in {"BUY", "SELL", "HOLD"}
    assert {"action", "suggestion"} <= set(result["columns"])
