"""Every stage is its own process, so what a stage imports is paid on every run: review and persist
never load torch or stable-baselines3 (~5-8 s), the pipeline process (it only chains stages) loads
neither those nor matplotlib, and the builtin engine's determinism switch does not drag in
torch._dynamo (2-3 s). Checked in fresh interpreters: the modules each process imports at start
and the ones its step imports when it runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

HEAVY = ("torch", "stable_baselines3", "matplotlib", "torch._dynamo", "gymnasium")

_PROBE = """
import json, sys
for name in sys.argv[2:]:
    __import__(name)
if sys.argv[1] == "train":
    from tradeflow.engines.builtin.agent import reproducible_torch
    with reproducible_torch():
        pass
if sys.argv[1] == "train_and_load":  # a real (tiny) training, then the saved model loaded back
    import tempfile
    from pathlib import Path
    from tradeflow.config import resolve_config
    from tradeflow.data import load_market_data
    from tradeflow.engines import get_engine
    from tradeflow.features import compute_features, split_for_run
    cfg = resolve_config({"symbol": "AAPL", "epochs": 1, "data_source": "csv:data/trademaster/dj30_2020_2021.csv"})
    splits = split_for_run(compute_features(load_market_data(cfg).bars), cfg)
    engine = get_engine("builtin")
    with tempfile.TemporaryDirectory() as tmp:
        result = engine.train(splits, cfg, workdir=Path(tmp))
        result.agent.save(Path(tmp) / "agent")
        engine.load_agent(Path(tmp) / "agent")
print(json.dumps(sorted(m for m in sys.modules if m in {heavy})))
""".replace("{heavy}", repr(set(HEAVY)))


def _loaded(kind: str, *modules: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, kind, *modules], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_review_and_persist_processes_never_load_torch_or_stable_baselines3():
    # the review step's own lazy imports included: its run description and transcript
    review = _loaded("review", "entrypoints.review", "tradeflow.steps.review", "review_agents", "tradeflow.runs.notes",
                     "tradeflow.runs.review_trace")
    persist = _loaded("persist", "entrypoints.persist", "tradeflow.steps.persist", "tradeflow.webui")
    assert not review & {"torch", "stable_baselines3", "gymnasium", "matplotlib"}, review
    assert not persist & {"torch", "stable_baselines3", "gymnasium", "matplotlib"}, persist


def test_the_pipeline_process_loads_no_ml_or_plotting_library():
    # run_pipeline's own imports: data loading, model resolution (mode inference), the WebUI DAG id
    loaded = _loaded("pipeline", "entrypoints.pipeline", "tradeflow.pipeline.run", "tradeflow.data",
                     "tradeflow.steps.inference", "tradeflow.webui")
    assert not loaded, loaded


def test_deterministic_training_does_not_import_torch_dynamo():
    loaded = _loaded("train", "entrypoints.train_backtest", "tradeflow.engines.builtin")
    assert {"torch", "stable_baselines3"} <= loaded
    assert "torch._dynamo" not in loaded


def test_training_and_loading_a_model_do_not_import_torch_dynamo():
    """SB3 builds an Adam optimizer for every model it creates or loads; torch's optimizer methods
    import dynamo on first use unless the builtin engine pre-empts it (~3 s a train/inference process)."""
    loaded = _loaded("train_and_load", "tradeflow.engines.builtin")
    assert {"torch", "stable_baselines3"} <= loaded
    assert "torch._dynamo" not in loaded
