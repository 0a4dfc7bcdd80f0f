"""Walk-forward across a universe: one parent MLflow run, one child run per symbol, a report.

    result = evaluate_universe(base_cfg, ["AAPL", "MSFT"], WalkForwardSpec())

Universe figures are medians over symbols with percentile-bootstrap 95% intervals (symbols
resampled with replacement, seeded), so one lucky stock cannot carry them. The random policy
enters the comparisons as the mean over its seeds per symbol (``random_mean``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradeflow.config import MAX_SYMBOLS, RunConfig
from tradeflow.errors import ConfigError
from tradeflow.errors import StepError
from tradeflow.evaluation.policies import BUY_AND_HOLD, FLAT, RANDOM_PREFIX, REVIEWED, SMA_CROSSOVER
from tradeflow.evaluation.walkforward import (
    MAX_EVALUATE_DAYS,
    SymbolResult,
    WalkForwardSpec,
    evaluate_symbol,
    evaluation_window,
)

if TYPE_CHECKING:  # the report (matplotlib) loads only when a universe is evaluated
    from tradeflow.evaluation.report import UniverseResult

log = logging.getLogger(__name__)

RANDOM_MEAN = "random_mean"
HEADLINE_METRICS = ("sharpe", "total_return", "annualised_return", "sortino", "max_drawdown", "turnover", "hit_rate")
BOOTSTRAP_DRAWS = 2000
TICKER_COLUMNS = ("tic", "ticker", "symbol")


def universe_symbols(data_source: str) -> list[str]:
    """Every ticker in a ``csv:`` source's ticker column, sorted; other sources need ``symbols``."""
    from tradeflow.data.files import parse_paths, read_table

    if not data_source.startswith("csv:"):
        raise ConfigError(f"evaluate: symbols is empty and data_source {data_source!r} cannot list its symbols; "
                          "give -P symbols=AAPL,MSFT,...")
    found: set[str] = set()
    for path in parse_paths(data_source, "universe"):
        table = read_table(path, "universe")
        column = next((c for c in table.columns if str(c).strip().lower() in TICKER_COLUMNS), None)
        if column is None:
            raise ConfigError(f"evaluate: {path} has no ticker column ({'/'.join(TICKER_COLUMNS)}); "
                              "give -P symbols=<the one symbol it holds>")
        found |= set(table[column].dropna().astype(str).str.strip().str.upper())
    return sorted(found)


def parse_symbols(text: str) -> list[str]:
    """``"AAPL, msft"`` -> ``["AAPL", "MSFT"]`` (order kept, duplicates dropped)."""
    out: list[str] = []
    for part in (p.strip().upper() for p in text.split(",")):
        if part and part not in out:
            out.append(part)
    return out



def bootstrap_median(values: np.ndarray, *, seed: int, draws: int = BOOTSTRAP_DRAWS) -> tuple[float, float, float]:
    """(median, 2.5th, 97.5th percentile of the bootstrapped median); NaNs dropped."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(draws, len(values)), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.median(values)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def long_table(per_symbol: dict[str, SymbolResult]) -> pd.DataFrame:
    """One row per (symbol, policy), plus ``random_mean`` (mean over the random seeds)."""
    rows = []
    for symbol, result in per_symbol.items():
        randoms = []
        for policy, metrics in result.metrics.items():
            rows.append({"symbol": symbol, "policy": policy, **metrics})
            if policy.startswith(RANDOM_PREFIX):
                randoms.append(metrics)
        if randoms:
            mean = {k: float(np.nanmean([m[k] for m in randoms])) for k in randoms[0]}
            rows.append({"symbol": symbol, "policy": RANDOM_MEAN, **mean})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, *, seed: int) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Medians with bootstrap intervals per policy, and paired comparisons of the reviewed decision
    (and each agent) against buy-and-hold, flat and random."""
    rows = []
    for policy, group in table.groupby("policy", sort=False):
        row: dict[str, Any] = {"policy": policy, "symbols": len(group)}
        for metric in HEADLINE_METRICS + ("brier",):
            if metric not in group or group[metric].isna().all():
                continue
            median, lo, hi = bootstrap_median(group[metric].to_numpy(), seed=seed)
            row |= {metric: median, f"{metric}_lo": lo, f"{metric}_hi": hi}
        rows.append(row)
    summary = pd.DataFrame(rows)
    wide = table.pivot(index="symbol", columns="policy", values="sharpe")
    comparisons: dict[str, dict[str, float]] = {}
    subjects = [p for p in wide.columns if p == REVIEWED or p.startswith("agent_")]
    for subject in subjects:
        for baseline in (BUY_AND_HOLD, FLAT, RANDOM_MEAN, SMA_CROSSOVER):
            if baseline not in wide:
                continue
            diff = (wide[subject] - wide[baseline]).to_numpy()
            median, lo, hi = bootstrap_median(diff, seed=seed)
            comparisons[f"{subject}_vs_{baseline}"] = {
                "median_sharpe_difference": median, "ci_lo": lo, "ci_hi": hi,
                "beats_on": float(np.sum(diff > 0)), "symbols": float(np.isfinite(diff).sum()),
            }
    return summary, comparisons


def calibration_table(per_symbol: dict[str, SymbolResult], bins: Sequence[float] = (0.0, 0.5, 0.6, 0.7, 0.8, 1.0001)) -> pd.DataFrame:
    """Reviewed BUY/SELL calls binned by stated confidence: count, mean confidence, observed hit rate."""
    frames = []
    for result in per_symbol.values():
        t = result.decisions.table
        if "reviewed_action" not in t:
            continue
        directional = t[t["reviewed_action"].isin(["BUY", "SELL"]) & t["forward_return"].notna()]
        sign = directional["reviewed_action"].map({"BUY": 1, "SELL": -1})
        frames.append(pd.DataFrame({"confidence": directional["reviewed_confidence"],
                                    "hit": (sign * directional["forward_return"] > 0).astype(float)}))
    if not frames:
        return pd.DataFrame(columns=["bin", "count", "mean_confidence", "hit_rate"])
    calls = pd.concat(frames, ignore_index=True)
    calls["bin"] = pd.cut(calls["confidence"], list(bins), right=False)
    grouped = calls.groupby("bin", observed=True)
    return pd.DataFrame({"count": grouped.size(), "mean_confidence": grouped["confidence"].mean(),
                         "hit_rate": grouped["hit"].mean()}).reset_index().assign(bin=lambda f: f["bin"].astype(str))


def reviewed_calls(per_symbol: dict[str, SymbolResult]) -> pd.DataFrame:
    """Every reviewed BUY/SELL call whose horizon closed: stated confidence and whether it was right."""
    frames = []
    for symbol, result in per_symbol.items():
        t = result.decisions.table
        if "reviewed_action" not in t:
            continue
        d = t[t["reviewed_action"].isin(["BUY", "SELL"]) & t["forward_return"].notna()]
        sign = d["reviewed_action"].map({"BUY": 1, "SELL": -1})
        frames.append(pd.DataFrame({"symbol": symbol, "date": d["date"], "confidence": d["reviewed_confidence"],
                                    "hit": (sign * d["forward_return"] > 0).astype(float)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["symbol", "date", "confidence", "hit"])


def calibration_scores(per_symbol: dict[str, SymbolResult], bins: int = 10) -> dict[str, float]:
    """Over all reviewed calls: Brier, expected calibration error (``bins`` equal-width bins, weighted
    by calls), and how often the calls stated at 0.6-0.8 were right."""
    calls = reviewed_calls(per_symbol)
    if calls.empty:
        return {}
    c, hit = calls["confidence"].to_numpy(np.float64), calls["hit"].to_numpy(np.float64)
    which = np.clip((c * bins).astype(int), 0, bins - 1)
    ece = sum(abs(c[which == b].mean() - hit[which == b].mean()) * np.sum(which == b) for b in np.unique(which)) / len(c)
    mid = (c >= 0.6) & (c < 0.8)
    return {"calls": float(len(c)), "brier": float(np.mean((c - hit) ** 2)), "ece": float(ece),
            "hit_rate": float(hit.mean()), "mean_confidence": float(c.mean()),
            "calls_0.6_0.8": float(mid.sum()), "hit_rate_0.6_0.8": float(hit[mid].mean()) if mid.any() else float("nan")}


PER_YEAR_POLICIES = ("reviewed", "buy_and_hold", "sma_crossover")


def per_year_table(per_symbol: dict[str, SymbolResult]) -> pd.DataFrame:
    """Median over symbols, per calendar year and policy, of the year's return and Sharpe (daily,
    annualised) from each policy's ledger; ``symbols`` = how many had bars that year."""
    from tradeflow.backtest import periods_per_year_for

    rows = []
    for symbol, result in per_symbol.items():
        for policy, ledger in result.ledgers.items():
            if policy not in PER_YEAR_POLICIES and not policy.startswith("agent_"):
                continue
            ppy = periods_per_year_for(ledger["date"])
            equity = ledger.set_index("date")["equity"]
            daily = equity.pct_change().dropna()
            for year, r in daily.groupby(daily.index.year):
                sd = r.std()
                rows.append({"year": int(year), "policy": policy, "symbol": symbol,
                             "return": float((1 + r).prod() - 1),
                             "sharpe": float(r.mean() / sd * np.sqrt(ppy)) if sd > 0 else 0.0})
    if not rows:
        return pd.DataFrame(columns=["year", "policy", "symbols", "return", "sharpe"])
    frame = pd.DataFrame(rows)
    return (frame.groupby(["year", "policy"]).agg(symbols=("symbol", "nunique"), **{"return": ("return", "median")},
                                                  sharpe=("sharpe", "median")).reset_index())


def _start_child(run_name: str):
    """A new child run of the active run. Created explicitly: under ``mlflow run``,
    ``start_run(nested=True)`` would resume the parent (it reads ``MLFLOW_RUN_ID``)."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    parent = mlflow.active_run()
    child = MlflowClient().create_run(parent.info.experiment_id, run_name=run_name,
                                      tags={MLFLOW_PARENT_RUN_ID: parent.info.run_id})
    return mlflow.start_run(run_id=child.info.run_id, nested=True)

def log_symbol_run(cfg: RunConfig, result: SymbolResult, market, wall: float) -> None:
    """The child run of one symbol: params, ``<policy>_<metric>`` metrics, decisions, folds, plot."""
    import mlflow

    from tradeflow.evaluation.report import policy_equity_plot
    from tradeflow.runs.records import Tag

    decisions = result.decisions
    mlflow.set_tags({Tag.SYMBOL: cfg.symbol, Tag.DATA_SOURCE: market.source, Tag.DATA_DIGEST: market.digest,
                     Tag.STAGE: "evaluate.symbol"})
    mlflow.log_params({"symbol": cfg.symbol, "rebalances": len(decisions.rebalance_rows),
                       "first_decision": f"{decisions.table['date'].iloc[0]:%Y-%m-%d}",
                       "last_decision": f"{decisions.table['date'].iloc[-1]:%Y-%m-%d}"})
    metrics = {f"{policy}_{k}": v for policy, m in result.metrics.items() for k, v in m.items() if np.isfinite(v)}
    metrics |= {"wall_seconds": wall, **{f"{k}_seconds": v for k, v in decisions.seconds.items()},
                "refits": float(len(decisions.folds)),
                "gate_failed_refits": float(sum(not f["gate_passed"] for f in decisions.folds))}
    mlflow.log_metrics(metrics)
    mlflow.log_table(decisions.table.assign(date=decisions.table["date"].dt.strftime("%Y-%m-%d")), "decisions.json")
    mlflow.log_table(pd.DataFrame(decisions.folds), "folds.json")
    mlflow.log_figure(policy_equity_plot(result.ledgers, cfg.symbol), "plots/equity.png")


def _pooled_models(base_cfg: RunConfig, symbols: Sequence[str], spec: WalkForwardSpec) -> tuple[dict, float]:
    """The pooled agent at every refit date of the universe (``tradeflow.evaluation.pooled``); a symbol
    whose data fails here is left out of the pool (its own walk-forward reports the failure)."""
    import tempfile

    from tradeflow.data import load_market_data
    from tradeflow.evaluation.pooled import train_pooled
    from tradeflow.evaluation.walkforward import rebalance_rows
    from tradeflow.features import compute_features

    features, dates = {}, []
    for symbol in symbols:
        cfg = base_cfg.override({"symbol": symbol})
        try:
            market = load_market_data(cfg.model_copy(update={"backtest_lookback_days": 2 * MAX_EVALUATE_DAYS}))
            frame = compute_features(evaluation_window(market.bars, spec, symbol=symbol))
            rows = rebalance_rows(len(frame), spec, symbol=symbol)
        except Exception as exc:  # noqa: BLE001 - reported by the symbol's own walk-forward
            log.warning("pooled agent: %s left out (%s)", symbol, exc)
            continue
        features[symbol] = frame
        dates += list(frame["date"].iloc[rows[:: spec.refit_every]])
    with tempfile.TemporaryDirectory(prefix="tradeflow-pooled-") as tmp:
        models = train_pooled(base_cfg, features, dates, Path(tmp))
    return models, float(sum(m[2] for m in models.values()))


def _universe_labels(base_cfg: RunConfig, symbols: Sequence[str], spec: WalkForwardSpec):
    """Every symbol's up/down labels over the horizon (``metalabel.UniverseLabels``), on the same feature
    rows its walk-forward decides on; read at each decision date for the meta-labeller's prior. A symbol
    whose data fails here is left out (its own walk-forward reports the failure)."""
    from tradeflow.data import load_market_data
    from tradeflow.features import compute_features
    from tradeflow.metalabel import UniverseLabels

    closes = {}
    for symbol in symbols:
        cfg = base_cfg.override({"symbol": symbol})
        try:
            market = load_market_data(cfg.model_copy(update={"backtest_lookback_days": 2 * MAX_EVALUATE_DAYS}))
            frame = compute_features(evaluation_window(market.bars, spec, symbol=symbol))
        except Exception as exc:  # noqa: BLE001 - reported by the symbol's own walk-forward
            log.warning("universe prior: %s left out (%s)", symbol, exc)
            continue
        closes[symbol] = (frame["date"].to_numpy(), frame["close"].to_numpy(np.float64))
    return UniverseLabels(closes, horizon=spec.horizon)


def evaluate_universe(base_cfg: RunConfig, symbols: Sequence[str], spec: WalkForwardSpec, *,
                      log_children: bool = True) -> UniverseResult:
    """Walk forward over every symbol (each in its own child run when an MLflow run is active);
    a symbol that fails is reported with its reason and the others go on."""
    import mlflow

    from tradeflow.data import load_market_data
    from tradeflow.evaluation.report import UniverseResult

    if len(symbols) > MAX_SYMBOLS:
        raise ConfigError(f"evaluate: {len(symbols)} symbols exceed the cap of {MAX_SYMBOLS}")
    per_symbol: dict[str, SymbolResult] = {}
    failures: dict[str, str] = {}
    started = time.perf_counter()
    pooled, pooled_seconds = _pooled_models(base_cfg, symbols, spec) if spec.pooled and len(symbols) > 1 else ({}, 0.0)
    # the meta-labeller's prior: the universe's earlier base rate (2+ symbols), else the symbol's own
    universe = _universe_labels(base_cfg, symbols, spec) if spec.universe_prior and len(symbols) > 1 else None
    for index, symbol in enumerate(symbols, 1):
        cfg = base_cfg.override({"symbol": symbol})
        t0 = time.perf_counter()
        child = _start_child(f"evaluate {symbol}") if log_children and mlflow.active_run() else None
        try:
            # evaluate's own window: the whole history the source holds (no inference lookback), from
            # start_date, capped by MAX_EVALUATE_DAYS (a one-line error, never a silent cut)
            market = load_market_data(cfg.model_copy(update={"backtest_lookback_days": 2 * MAX_EVALUATE_DAYS}))
            bars = evaluation_window(market.bars, spec, symbol=symbol)
            result = evaluate_symbol(cfg, bars, spec, source=market.source, pooled=pooled or None, universe=universe)
        except Exception as exc:  # one symbol's failure is reported, not fatal to the universe
            from tradeflow.runs.records import Tag
            from tradeflow.runs.tracking import one_line

            failures[symbol] = one_line(exc)
            log.warning("evaluate %s failed: %s", symbol, failures[symbol])
            if child is not None:
                mlflow.set_tag(Tag.FAILURE, failures[symbol][:5000])
                mlflow.end_run(status="FAILED")
            continue
        per_symbol[symbol] = result
        wall = time.perf_counter() - t0
        if child is not None:
            log_symbol_run(cfg, result, market, wall)
            mlflow.end_run(status="FINISHED")
        rev = result.metrics.get(REVIEWED, {})
        log.info("evaluate %d/%d %s: %.1fs (train %.1fs, review %.1fs) reviewed sharpe %s, buy-and-hold %.2f",
                 index, len(symbols), symbol, wall, result.decisions.seconds["train"], result.decisions.seconds["review"],
                 f"{rev['sharpe']:.2f}" if rev else "n/a", result.metrics[BUY_AND_HOLD]["sharpe"])
    if not per_symbol:
        raise StepError("evaluate: every symbol failed: " + "; ".join(f"{s}: {r}" for s, r in failures.items())[:2000])
    table = long_table(per_symbol)
    summary, comparisons = summarise(table, seed=base_cfg.seed)
    return UniverseResult(spec, per_symbol, failures, table, summary, comparisons, calibration_table(per_symbol),
                          {"wall": time.perf_counter() - started,
                           "train": sum(r.decisions.seconds["train"] for r in per_symbol.values()) + pooled_seconds,
                           "pooled_train": pooled_seconds,
                           "review": sum(r.decisions.seconds["review"] for r in per_symbol.values())},
                          calibration_scores=calibration_scores(per_symbol), per_year=per_year_table(per_symbol))


def rules_served(per_symbol: dict[str, SymbolResult]) -> dict[str, int]:
    """How many decisions each decision rule served (``benchmark`` = no demonstrated edge)."""
    counts: dict[str, int] = {}
    for result in per_symbol.values():
        for rule in result.decisions.table.get("reviewed_rule", pd.Series(dtype=str)):
            counts[rule] = counts.get(rule, 0) + 1
    return dict(sorted(counts.items()))


def result_json(result: UniverseResult) -> dict[str, Any]:
    """The machine-readable summary (``summary.json``)."""
    return json.loads(json.dumps({
        "spec": {**result.spec.__dict__, "mode": result.spec.mode},
        "symbols": sorted(result.per_symbol), "failures": result.failures,
        "summary": result.summary.to_dict(orient="records"), "comparisons": result.comparisons,
        "calibration": result.calibration.to_dict(orient="records"), "seconds": result.seconds,
        "calibration_scores": result.calibration_scores, "per_year": result.per_year.to_dict(orient="records"),
        "rules_served": rules_served(result.per_symbol),
    }, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def write_outputs(result: UniverseResult, directory: Path) -> list[Path]:
    """Tables, report and plots into ``directory`` (the caller logs them as artifacts)."""
    from tradeflow.evaluation.report import write_report

    return write_report(result, directory)
