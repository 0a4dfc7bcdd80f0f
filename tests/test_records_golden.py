"""Behaviour unchanged: one real pipeline run's MLflow records and WebUI payloads against a golden file.

One ``mlflow run . -e pipeline`` (mode both, AAPL on the shipped daily bars, rules reviewer, one
epoch) into a fresh SQLite store, with the fake WebUI backend on 127.0.0.1. What a restructure must
not change is compared with ``tests/golden/pipeline_records.json``, written from the tree before it:
each run's entry point and place in the run tree, its parameter names and values, its tag keys (and
values where they do not depend on ids, clocks, the commit or the trained weights), its metric keys,
its artifact paths, and every WebUI payload's key paths.

Regenerate (only when a change of records is intended): ``UPDATE_GOLDEN=1 pytest tests/test_records_golden.py``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, mlflow_run
from tests.support.webui import WebUIServer

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden" / "pipeline_records.json"
PARAMS = {"symbol": "AAPL", "data_source": "csv:data/trademaster/dj30_2020_2021.csv", "epochs": "1",
          "mode": "both", "reviewer": "rules", "execution_id": "golden-exec"}
#: Tags whose values change from run to run (ids, clocks, commit, host, trained weights, prose).
VOLATILE_TAGS = re.compile(
    r"^(mlflow\.(source\.git\.commit|source\.name|user|note\.content|runName|log-model\.history|loggedArtifacts)"
    r"|tradeflow\.(code_version|cache_key|data_digest|model_version|decision\.action|serving_model|gate_reason"
    r"|alias_decision|model_suggestion|pipeline_process|stage\.\w+\.seconds)"
    r"|review\.(action|trace_id|contradicts_model|guardrails|fallback|fallback_reason)"
    r"|webui\.(signal_id|llm_id|chart_id|url))$")
#: Tags MLflow sets or not depending on the checkout (a clone has an ``origin`` remote, a worktree
#: may not): left out of the comparison.
CHECKOUT_TAGS = re.compile(r"^mlflow\.(source\.git\.repoURL|gitRepoURL|source\.git\.branch)$")
#: The golden file's stand-in for a value the WebUI backend sends from its own state.
_RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def _normalise(value: str, names: dict[str, str]) -> str:
    for run_id, name in names.items():
        value = value.replace(run_id, f"<run:{name}>")
    value = value.replace(str(REPO), "<repo>")
    return _RUN_ID.sub("<run:other>", value)


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(out)


def _shape(value, prefix: str = "") -> set[str]:
    """Every key path of a JSON value, list items folded into ``[]``."""
    if isinstance(value, dict):
        out = {prefix} if prefix else set()
        for key, item in value.items():
            out |= _shape(item, f"{prefix}.{key}" if prefix else key)
        return out
    if isinstance(value, list):
        out = {prefix}
        for item in value:
            out |= _shape(item, f"{prefix}[]")
        return out
    return {prefix}


def _records(client: MlflowClient, server: WebUIServer) -> dict:
    experiment = client.get_experiment_by_name("trademaster_autogen").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("tradeflow.stage") == "pipeline"]
    assert len(parents) == 1, [r.data.tags.get("tradeflow.stage") for r in runs]
    names = {r.info.run_id: r.data.tags.get("mlflow.project.entryPoint", "?") for r in runs}
    out: dict = {"runs": {}, "webui": {}}
    for run in runs:
        name = names[run.info.run_id]
        assert name not in out["runs"], f"two {name} runs"
        tags = {k: "<volatile>" if VOLATILE_TAGS.match(k) else _normalise(v, names) for k, v in run.data.tags.items()
                if not CHECKOUT_TAGS.match(k)}
        out["runs"][name] = {
            "status": run.info.status,
            "parent": names.get(run.data.tags.get("mlflow.parentRunId", ""), None),
            "params": {k: _normalise(v, names) for k, v in sorted(run.data.params.items())},
            "tags": dict(sorted(tags.items())),
            "metrics": sorted(run.data.metrics),
            "artifacts": _artifact_paths(client, run.info.run_id),
        }
    posts = [r for r in server.requests if r["method"] in ("POST", "PATCH") and r["path"].startswith("/api/artifacts")]
    for request in posts:
        body = request["body"]
        out["webui"][body["type"]] = {"method": request["method"], "path": request["path"],
                                      "keys": sorted(_shape(body))}
    return out


def test_pipeline_records_match_the_golden_file(tracking_store):
    with WebUIServer() as server:
        result = mlflow_run("pipeline", PARAMS, env={"BACKEND_API_URL": server.url})
        assert result.returncode == 0, result.stderr[-3000:]
        records = _records(MlflowClient(tracking_store), server)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert set(records["runs"]) == set(golden["runs"]) == {"pipeline", "train_backtest", "inference", "review", "persist"}
    for name, want in golden["runs"].items():
        got = records["runs"][name]
        for part in ("status", "parent", "params", "tags", "metrics", "artifacts"):
            assert got[part] == want[part], f"{name}: {part} differ from the golden file"
    assert records["webui"] == golden["webui"]
