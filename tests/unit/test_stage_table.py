"""The stage table (``tradeflow.pipeline.stages``) is the one declaration of the pipeline's stages:
the modes, the lease, the MLproject parameters and the hand-off between stages all derive from it."""

from __future__ import annotations

import dataclasses

import yaml

from tests.conftest import REPO
from tradeflow.config import resolve_config
from tradeflow.names import MODES
from tradeflow.pipeline.stages import STAGES, STAGES_BY_MODE, Handoff, Invocation, stage_named
from tradeflow.runs.records import RECORDS, Tag

INVOCATION = Invocation('{"symbol":"AAPL"}', execution_id="exec-1", dag_id="dag", task_id="task")


def test_every_mode_runs_its_stages_in_flow_order():
    order = [stage.name for stage in STAGES]
    assert order == ["train_backtest", "inference", "review", "persist"]
    assert tuple(STAGES_BY_MODE) == MODES
    for mode, stages in STAGES_BY_MODE.items():
        names = [s.name for s in stages]
        assert names == sorted(names, key=order.index) and names, mode


def test_each_stage_is_an_entry_point_with_its_record_and_only_its_parameters():
    project = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    cfg = resolve_config({"symbol": "AAPL"})
    for stage in STAGES:
        assert RECORDS[stage.name] is stage.record
        params = stage.params(cfg, Handoff(), INVOCATION)
        assert set(params) <= set(project[stage.name]["parameters"]), stage.name
        assert all(isinstance(v, str) for v in params.values())


def test_a_stage_reads_only_what_an_earlier_stage_of_its_mode_hands_on():
    """Each ``reads`` field is filled by an earlier stage's ``collect`` in every mode that runs it,
    or (the first stage) before any stage runs."""
    cfg = resolve_config({"symbol": "AAPL"})
    filled_by = {"train_backtest": "model_uri", "inference": "evidence_uri", "review": "review_run_id"}
    for mode, stages in STAGES_BY_MODE.items():
        handed: set[str] = set()
        for index, stage in enumerate(stages):
            missing = set(stage.reads) - handed
            assert not missing or index == 0, (mode, stage.name, missing)
            empty = stage.params(cfg, Handoff(), INVOCATION)
            full = stage.params(cfg, Handoff(model_uri="models:/m/1", evidence_uri="runs:/e/evidence.json",
                                             review_run_id="r" * 32), INVOCATION)
            changed = {key for key in full if full[key] != empty[key]}
            assert bool(changed) == bool(stage.reads), (stage.name, changed)
            if stage.name in filled_by:
                handed.add(filled_by[stage.name])


def test_collect_passes_on_ids_only():
    handoff = Handoff()
    stage_named("train_backtest").collect("a" * 32, {Tag.MODEL_NAME: "builtin_AAPL", Tag.MODEL_VERSION: "3"}, handoff)
    assert handoff.model_uri == "models:/builtin_AAPL/3"
    stage_named("train_backtest").collect("a" * 32, {Tag.SERVING_MODEL: "models:/builtin_AAPL/2"}, handoff)
    assert handoff.model_uri == "models:/builtin_AAPL/2"
    stage_named("inference").collect("b" * 32, {}, handoff)
    assert handoff.evidence_uri == f"runs:/{'b' * 32}/evidence.json"
    assert all(isinstance(v, (str, type(None), dict)) for v in dataclasses.asdict(handoff).values())


def test_only_persist_is_unleased_and_its_cache_key_names_the_backend(monkeypatch):
    assert [s.name for s in STAGES if not s.leased] == ["persist"]
    monkeypatch.setenv("BACKEND_API_URL", "http://127.0.0.1:9")
    assert stage_named("persist").cache_extra() == {"backend": "http://127.0.0.1:9"}
