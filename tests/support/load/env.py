"""The environment and names of every load/fault run: the tiny config, bytecode reuse for child
Pythons, the subprocess environment, the DAG/experiment/stage names the audits check."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..data import DJ30_SOURCE, DJ30_TICKERS, REPO  # noqa: F401 - DJ30_TICKERS re-exported

DAG_ID = "trademaster_autogen_pipeline_workflow"
EXPERIMENT = "trademaster_autogen"
STAGES = ("train_backtest", "inference", "review", "persist")
#: The WebUI artifacts every symbol of every execution must have exactly one of.
REQUIRED_ARTIFACTS = ("signal", "llm")


def fast_python_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment overrides that let child Pythons reuse compiled bytecode.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in CI) and no ``.pyc`` in the venv, every
    ``mlflow run`` stage recompiles mlflow, torch & co: ``import mlflow`` takes 4.0 s instead of
    1.6 s. Each symbol's pipeline starts ~10 Python processes, so this halves the CPU a load test
    needs. Same directory as ``MlflowServer`` uses (outside the repo: the stage cache keys on a
    digest of the working tree)."""
    env = os.environ if environ is None else environ
    if env.get("PYTHONPYCACHEPREFIX") or not env.get("PYTHONDONTWRITEBYTECODE"):
        return {}
    prefix = Path(tempfile.gettempdir()) / f"tradeflow-pycache-{os.getuid()}"
    return {"PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": ""}


def tiny_config_env(data_source: str = DJ30_SOURCE) -> dict[str, str]:
    """The config layer (``TRADEFLOW_*``) of every load/fault run: 1 epoch, a 8-unit network,
    ~275 bars (400 calendar days), the rules reviewer. Identical everywhere, so the stage cache
    is shared between the load test and the fault cases."""
    return {
        "TRADEFLOW_EPOCHS": "1",
        "TRADEFLOW_HIDDEN_DIMS": "8",
        "TRADEFLOW_BACKTEST_LOOKBACK_DAYS": "400",
        "TRADEFLOW_REVIEWER": "rules",
        "TRADEFLOW_DATA_SOURCE": data_source,
    }


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` + the venv's ``bin`` first on PATH + ``fast_python_env`` + ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(fast_python_env(env))
    env.update(extra or {})
    return env
