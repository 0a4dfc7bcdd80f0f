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


def _metrics(result, prefix: str = "") -> dict[str, float]:
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
    metrics |= {f"reviewed_calibration_{k}": float(v) for k, v in result.calibration_scores.items() if v == v}
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _spec_params(spec: WalkForwardSpec, prefix: str = "evaluate.") -> dict[str, str]:
    return {f"{prefix}mode": spec.mode, **{f"{prefix}{k}": ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
                                           for k, v in spec.__dict__.items()}}


def evaluate_step(base_cfg: RunConfig, symbols: Sequence[str], spec: WalkForwardSpec) -> dict:
    """Run the walk-forward inside one parent run; return ``summary.json``'s content."""
    with stage_run(STAGE, experiment_name=base_cfg.experiment_name,
                   tags={Tag.DATA_SOURCE: base_cfg.data_source, Tag.UNIVERSE_SIZE: str(len(symbols))}) as run:
        mlflow.log_params({k: v for k, v in base_cfg.flat_params().items() if k != "cfg.symbol"})
        mlflow.log_params({"evaluate.symbols": ",".join(symbols)[:6000], **_spec_params(spec)})
        result = evaluate_universe(base_cfg, symbols, spec)
        mlflow.log_metrics(_metrics(result))
        if result.failures:
            mlflow.set_tag(Tag.FAILED_SYMBOLS, ",".join(sorted(result.failures))[:5000])
        summary = result_json(result) | {"run_id": run.info.run_id}
        with tempfile.TemporaryDirectory() as tmp:
            write_outputs(result, Path(tmp))
            mlflow.log_artifacts(tmp, "report")
        mlflow.log_dict(summary, EvaluateRecord.summary.path)
        print(_headline(result), flush=True)
        return summary


def evaluate_sets(sets: Sequence[tuple[str, RunConfig, Sequence[str], WalkForwardSpec]]) -> dict:
    """The default set (universes that span regimes) in one parent run: each universe summarised on
    its own (metrics ``<set>.<name>``, ``report/<set>/``), since a median over DJ30 stocks and BTC
    together would mean nothing."""
    first = sets[0][1]
    with stage_run(STAGE, experiment_name=first.experiment_name,
                   tags={Tag.DATA_SOURCE: ";".join(cfg.data_source for _, cfg, _, _ in sets)[:5000],
                         Tag.UNIVERSE_SIZE: str(sum(len(symbols) for _, _, symbols, _ in sets))}) as run:
        mlflow.log_params({k: v for k, v in first.flat_params().items() if k not in ("cfg.symbol", "cfg.data_source")})
        out: dict = {"sets": {}, "run_id": run.info.run_id}
        failed: list[str] = []
        for name, cfg, symbols, spec in sets:
            mlflow.log_params({f"evaluate.{name}.symbols": ",".join(symbols)[:6000],
                               f"evaluate.{name}.data_source": cfg.data_source[:6000],
                               **_spec_params(spec, f"evaluate.{name}.")})
            result = evaluate_universe(cfg, symbols, spec)
            mlflow.log_metrics(_metrics(result, f"{name}."))
            failed += [f"{name}:{s}" for s in sorted(result.failures)]
            with tempfile.TemporaryDirectory() as tmp:
                write_outputs(result, Path(tmp))
                mlflow.log_artifacts(tmp, f"report/{name}")
            out["sets"][name] = result_json(result)
            print(f"[{name}] " + _headline(result), flush=True)
        if failed:
            mlflow.set_tag(Tag.FAILED_SYMBOLS, ",".join(failed)[:5000])
        mlflow.log_dict(out, EvaluateRecord.summary.path)
        return out


def _headline(result) -> str:
    rows = {r["policy"]: r for r in result.summary.to_dict(orient="records")}
    parts = []
    for policy in ("reviewed", *(f"agent_{a}" for a in result.spec.algorithms), "buy_and_hold", "random_mean"):
        if policy in rows:
            r = rows[policy]
            parts.append(f"{policy} {r['sharpe']:.2f} [{r['sharpe_lo']:.2f}, {r['sharpe_hi']:.2f}]")
    return (f"evaluate: {len(result.per_symbol)} symbols in {result.seconds['wall']:.0f}s; "
            "median out-of-sample Sharpe: " + "; ".join(parts))
