"""The ``evaluate`` step: one parent MLflow run over a universe, a child run per symbol, a report.

What the parent run records: params ``cfg.*`` (the resolved config every symbol starts from) and
``evaluate.*`` (schedule, universe); metrics ``<policy>_median_<metric>`` (+ ``_lo``/``_hi``
bootstrap bounds) and ``<subject>_vs_<baseline>_*`` paired comparisons; artifacts under
``report/`` (see ``tradeflow.evaluation.report``) and ``summary.json``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow

from tradeflow.config import RunConfig
from tradeflow.evaluation.universe import evaluate_universe, result_json, write_outputs
from tradeflow.evaluation.walkforward import WalkForwardSpec
from tradeflow.runs.records import EvaluateRecord, Tag
from tradeflow.runs.tracking import stage_run

log = logging.getLogger(__name__)

STAGE = "evaluate"


def evaluate_step(base_cfg: RunConfig, symbols: Sequence[str], spec: WalkForwardSpec) -> dict:
    """Run the walk-forward inside one parent run; return ``summary.json``'s content."""
    with stage_run(STAGE, experiment_name=base_cfg.experiment_name,
                   tags={Tag.DATA_SOURCE: base_cfg.data_source, Tag.UNIVERSE_SIZE: str(len(symbols))}) as run:
        mlflow.log_params({k: v for k, v in base_cfg.flat_params().items() if k != "cfg.symbol"})
        mlflow.log_params({"evaluate.symbols": ",".join(symbols)[:6000], "evaluate.mode": spec.mode,
                           **{f"evaluate.{k}": ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
                              for k, v in spec.__dict__.items()}})
        result = evaluate_universe(base_cfg, symbols, spec)
        metrics: dict[str, float] = {"wall_seconds": result.seconds["wall"], "train_seconds": result.seconds["train"],
                                     "review_seconds": result.seconds["review"],
                                     "symbols_evaluated": float(len(result.per_symbol)),
                                     "symbols_failed": float(len(result.failures))}
        for row in result.summary.to_dict(orient="records"):
            for key, value in row.items():
                if key not in ("policy", "symbols") and value == value:
                    metrics[f"{row['policy']}_median_{key}"] = float(value)
        for name, comparison in result.comparisons.items():
            metrics |= {f"{name}_{k}": float(v) for k, v in comparison.items() if v == v}
        mlflow.log_metrics(metrics)
        if result.failures:
            mlflow.set_tag(Tag.FAILED_SYMBOLS, ",".join(sorted(result.failures))[:5000])
        summary = result_json(result) | {"run_id": run.info.run_id}
        with tempfile.TemporaryDirectory() as tmp:
            write_outputs(result, Path(tmp))
            mlflow.log_artifacts(tmp, "report")
        mlflow.log_dict(summary, EvaluateRecord.summary.path)
        print(_headline(result), flush=True)
        return summary


def _headline(result) -> str:
    rows = {r["policy"]: r for r in result.summary.to_dict(orient="records")}
    parts = []
    for policy in ("reviewed", *(f"agent_{a}" for a in result.spec.algorithms), "buy_and_hold", "random_mean"):
        if policy in rows:
            r = rows[policy]
            parts.append(f"{policy} {r['sharpe']:.2f} [{r['sharpe_lo']:.2f}, {r['sharpe_hi']:.2f}]")
    return (f"evaluate: {len(result.per_symbol)} symbols in {result.seconds['wall']:.0f}s; "
            "median out-of-sample Sharpe: " + "; ".join(parts))
