"""Walk-forward evaluation of one symbol: refit, decide out of sample, account, score.

Schedule (on the feature rows of ``tradeflow.features.compute_features``):

- rebalance rows ``r_0 = min_train - 1, r_0 + step, ...`` up to the second-to-last row; the
  decision taken at the close of ``r_j`` is held until the close of ``r_{j+1}``;
- every ``refit_every``-th rebalance, each algorithm is retrained on the rows up to ``r_j``
  (all of them: expanding; the last ``window``: rolling), exactly as ``train_backtest`` would on
  that day, through its ``compute_train``: ``split_for_run`` (train/valid/test by the config's
  ratios), ``Engine.train`` (best epoch on valid), ``Engine.backtest`` on the three splits;
- the do-no-harm gate (``tradeflow.gate``) is applied to each refit, and a per-symbol
  ``champion`` moves as the registry alias does: only to a model that passes and beats the
  current champion on the new model's validation window;
- at each rebalance the served model acts on the last window of features (position 0, as
  ``inference`` does), the evidence is built with ``tradeflow.evidence.build_evidence`` from
  the bars up to that close, and ``review_agents.review`` (the review step's library code,
  guardrails included) turns it into the reviewed decision.

Nothing at a rebalance reads a bar after it: training data, evidence bars and indicators are cut at
the rebalance close (``tests/test_evaluation.py`` scrambles the future to prove it). Every policy
is then replayed through the same ``tradeflow.backtest.simulate`` ledger on the same bars and fees.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tradeflow.backtest import BacktestResult, periods_per_year_for, simulate
from tradeflow.config import RunConfig
from tradeflow.errors import ConfigError
from tradeflow.data.base import DataError, bars_digest
from tradeflow.evaluation.policies import (
    BUY_AND_HOLD,
    FLAT,
    REVIEWED,
    SMA_CROSSOVER,
    agent_name,
    buy_and_hold,
    flat,
    random_name,
    random_policy,
    sma_crossover,
)
from tradeflow.gate import GateResult, decide_alias

log = logging.getLogger(__name__)

#: evaluate reads the whole history it is given (its own window, not ``backtest_lookback_days``) up to
#: this many calendar days (30 years); longer data is refused with a one-line error, never cut silently
MAX_EVALUATE_DAYS = 10_958

REVIEW_DIRECTION = {"BUY": 1, "SELL": -1, "HOLD": 0}


def _is_date(text: str) -> bool:
    try:
        pd.Timestamp(text)
        return len(text) == 10
    except ValueError:
        return False


def evaluation_window(bars: pd.DataFrame, spec: WalkForwardSpec, *, symbol: str) -> pd.DataFrame:
    """The bars evaluate walks over: from ``spec.start_date`` (or the first bar) to the last; past
    ``MAX_EVALUATE_DAYS`` a one-line error says so (give a later start_date)."""
    out = bars if not spec.start_date else bars[bars["date"] >= pd.Timestamp(spec.start_date)].reset_index(drop=True)
    if out.empty:
        raise DataError(f"{symbol}: no bars on or after start_date {spec.start_date}")
    span = (out["date"].iloc[-1] - out["date"].iloc[0]).days
    if span > MAX_EVALUATE_DAYS:
        raise DataError(f"{symbol}: the data spans {span} calendar days, beyond evaluate's cap of {MAX_EVALUATE_DAYS} "
                        f"(30 years); give -P start_date=YYYY-MM-DD")
    return out


@dataclass(frozen=True)
class WalkForwardSpec:
    """How to walk forward. Bars are feature rows (daily bars after the 29-bar feature warm-up)."""

    min_train: int = 252
    window: int = 0
    step: int = 21
    horizon: int = 21
    refit_every: int = 3
    algorithms: tuple[str, ...] = ("dqn",)
    random_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    review: bool = True
    sma_fast: int = 20
    sma_slow: int = 50
    #: first bar to evaluate (``YYYY-MM-DD``; empty = the first the data holds); the last is ``end_date``
    start_date: str = ""
    #: also train one agent pooled across the universe (``tradeflow.evaluation.pooled``; 2+ symbols)
    pooled: bool = True
    #: with 2+ symbols, the meta-labeller's prior is the universe's earlier base rate
    #: (``metalabel.UniverseLabels``); ``False``: each symbol's own, as a one-symbol DAG run has it
    universe_prior: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.min_train >= 30, f"min_train must be >= 30 bars, got {self.min_train}"),
            (self.window == 0 or self.window >= 30, f"window must be 0 (expanding) or >= 30 bars, got {self.window}"),
            (self.step >= 1, f"step must be >= 1 bar, got {self.step}"),
            (self.horizon >= 1, f"horizon must be >= 1 bar, got {self.horizon}"),
            (self.refit_every >= 1, f"refit_every must be >= 1 rebalance, got {self.refit_every}"),
            (len(self.algorithms) >= 1, "algorithms must name at least one of dqn, ppo, a2c"),
            (set(self.algorithms) <= {"dqn", "ppo", "a2c"}, f"algorithms {','.join(self.algorithms)}: choose from dqn, ppo, a2c"),
            (0 < self.sma_fast < self.sma_slow, f"sma_fast {self.sma_fast} must be positive and below sma_slow {self.sma_slow}"),
            (self.start_date == "" or _is_date(self.start_date), f"start_date {self.start_date!r} is not YYYY-MM-DD"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"evaluate: {message}")

    @property
    def mode(self) -> str:
        return "expanding" if self.window == 0 else f"rolling {self.window}"

    def policies(self) -> list[str]:
        """Every policy name, in report order."""
        names = [REVIEWED] if self.review else []
        names += [agent_name(a) for a in self.algorithms]
        names += [BUY_AND_HOLD, FLAT, SMA_CROSSOVER]
        names += [random_name(s) for s in self.random_seeds]
        return names


@dataclass
class _Fitted:
    """A model trained at one refit, with the metrics ``train_backtest`` would log for it."""

    algorithm: str
    agent: Any
    row: int
    date: str
    metrics: dict[str, float]
    gate: GateResult
    valid_frame: pd.DataFrame
    train_seconds: float


@dataclass
class Decisions:
    """The out-of-sample decisions of every policy at every rebalance of one symbol."""

    symbol: str
    rebalance_rows: np.ndarray
    table: pd.DataFrame  # one row per rebalance: date, close, pos_<policy>, reviewed_*, model_*
    folds: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def rebalance_rows(n_rows: int, spec: WalkForwardSpec, *, symbol: str = "data") -> np.ndarray:
    """Feature rows at whose close a decision is taken; the last row is never one (nothing to
    trade it against)."""
    rows = np.arange(spec.min_train - 1, n_rows - 1, spec.step)
    if len(rows) == 0:
        raise DataError(f"{symbol}: {n_rows} feature rows leave no out-of-sample rebalance after "
                        f"min_train={spec.min_train}; lower min_train or load more history")
    return rows


def _fit(engine, cfg: RunConfig, history: pd.DataFrame, row: int, workdir: Path) -> _Fitted:
    """Train on ``history`` with the train step's own compute half, so a refit is what
    ``train_backtest`` would have recorded that day."""
    from tradeflow.features import split_for_run
    from tradeflow.steps.train_backtest import compute_train

    outcome = compute_train(split_for_run(history, cfg), cfg, engine=engine, workdir=workdir)
    return _Fitted(cfg.algorithm, outcome.agent, row, f"{history['date'].iloc[-1]:%Y-%m-%d}", outcome.metrics,
                   outcome.gate, outcome.frames["valid"], outcome.train_seconds)


def _promote(engine, cfg: RunConfig, champion: _Fitted | None, new: _Fitted) -> tuple[_Fitted | None, str]:
    """The registry's alias rule (``gate.decide_alias``, the one the train step applies): the
    champion moves only to a passing model that beats it on the new model's validation window."""
    incumbent = (engine.backtest(champion.agent, new.valid_frame, cfg).metrics["total_return"]
                 if champion is not None and new.gate.passed else None)
    move, reason = decide_alias(new.gate, new.metrics["valid_total_return"], incumbent)
    return (new if move else champion), reason


def _evidence(cfg: RunConfig, bars_upto: pd.DataFrame, served: _Fitted, action: Any, gate: dict, source: str) -> dict:
    from tradeflow.evidence import build_evidence
    from tradeflow.model import suggestion_for

    return build_evidence(
        symbol=cfg.symbol, bars=bars_upto, bar_size=cfg.bar_size,
        periods_per_year=periods_per_year_for(bars_upto["date"]),
        model={"uri": None, "version": f"walk-forward {served.date}", "engine": cfg.engine,
               "algorithm": served.algorithm, "suggestion": suggestion_for(int(action.action)),
               "target_position": int(action.action), "scores": {str(k): float(v) for k, v in action.scores.items()},
               "gate": gate},
        training_run={"run_id": None, "metrics": served.metrics},
        data={"source": source, "digest": bars_digest(bars_upto), "rows": len(bars_upto), "synthetic": cfg.is_synthetic},
    )


POOLED = "agent_pooled"


def decide(cfg: RunConfig, bars: pd.DataFrame, spec: WalkForwardSpec, *, source: str = "",
           pooled: dict | None = None, universe: Any = None) -> Decisions:
    """Walk forward over one symbol's validated bars; every decision uses bars up to its close only
    (``universe``: a ``metalabel.UniverseLabels`` of every symbol evaluated, read at each decision date
    for the meta-labeller's prior; ``None``: the symbol's own base rate)."""
    from review_agents import review

    from tradeflow import metalabel
    from tradeflow.engines import get_engine
    from tradeflow.decision_rules import AGENT, market_rules, reviewer_block
    from tradeflow.features import FEATURE_COLUMNS, compute_features
    from tradeflow.positions import target_position

    if cfg.split.valid_start is not None:
        raise ConfigError("evaluate: split.valid_start/test_start are fixed dates; the walk-forward refits on "
                          "moving windows, so give train_ratio/valid_ratio instead")
    mode = cfg.review.position_mode
    engine = get_engine(cfg.engine)
    features = compute_features(bars)
    rows = rebalance_rows(len(features), spec, symbol=cfg.symbol)
    bar_pos = np.searchsorted(bars["date"].to_numpy(), features["date"].to_numpy())
    columns = list(FEATURE_COLUMNS)
    window = cfg.trademaster.backward_num_day
    max_volume = cfg.trademaster.max_volume
    fee = cfg.trademaster.transaction_cost_pct
    ppy = periods_per_year_for(features["date"])
    close = features["close"].to_numpy(np.float64)
    obs_all = features[columns].to_numpy(np.float64)
    market = metalabel.feature_frame(close, ppy)
    rules = market_rules(close)
    agent_exposure = np.full(len(features), np.nan)
    rules[AGENT] = agent_exposure  # filled with the served model's out-of-sample positions as the walk goes
    pooled_exposure = np.full(len(features), np.nan)
    if pooled:
        from tradeflow.evaluation.pooled import latest_before

        rules[POOLED] = pooled_exposure
    dates = features["date"]

    def pooled_position(t: int) -> tuple[float, bool] | None:
        found = latest_before(pooled, dates.iloc[t]) if pooled else None
        if found is None:
            return None
        agent, gate, _ = found
        return float(agent.act(obs_all[t - window + 1 : t + 1], 0.0).action), bool(gate.passed)
    n = len(rows)
    seconds = {"train": 0.0, "review": 0.0}
    records: list[dict[str, Any]] = []
    folds: list[dict[str, Any]] = []
    newest: dict[str, _Fitted] = {}
    champions: dict[str, _Fitted | None] = {a: None for a in spec.algorithms}
    served: _Fitted | None = None
    reviewed_position = 0.0
    previous = 0
    with tempfile.TemporaryDirectory(prefix="tradeflow-wf-") as tmp:
        for j, r in enumerate(rows):
            r = int(r)
            if spec.review and served is not None:  # the served model's calls since the last rebalance
                for t in range(previous + 1, r):
                    agent_exposure[t] = max(0.0, float(served.agent.act(obs_all[t - window + 1 : t + 1], 0.0).action)) / max_volume
                    if (p := pooled_position(t)) is not None:
                        pooled_exposure[t] = max(0.0, p[0]) / max_volume
            if j % spec.refit_every == 0:
                lo = 0 if spec.window == 0 else max(0, r + 1 - spec.window)
                history = features.iloc[lo : r + 1].reset_index(drop=True)
                for algorithm in spec.algorithms:
                    algo_cfg = cfg.override({"algorithm": algorithm})
                    fitted = _fit(engine, algo_cfg, history, r, Path(tmp))
                    seconds["train"] += fitted.train_seconds
                    newest[algorithm] = fitted
                    champions[algorithm], alias = _promote(engine, algo_cfg, champions[algorithm], fitted)
                    folds.append({"symbol": cfg.symbol, "algorithm": algorithm, "refit_date": fitted.date,
                                  "train_rows": len(history), "train_start": f"{history['date'].iloc[0]:%Y-%m-%d}",
                                  "gate_passed": fitted.gate.passed, "gate_reason": fitted.gate.reason,
                                  "alias": alias, "train_seconds": round(fitted.train_seconds, 3),
                                  **{k: fitted.metrics[k] for k in ("valid_total_return", "valid_benchmark_total_return",
                                                                     "valid_sharpe", "test_total_return", "test_sharpe")}})
            obs = obs_all[r - window + 1 : r + 1]
            record: dict[str, Any] = {"date": features["date"].iloc[r], "row": r, "close": float(close[r])}
            for algorithm in spec.algorithms:
                position = int(newest[algorithm].agent.act(obs, 0.0).action)
                record[f"pos_{agent_name(algorithm)}"] = max(0, position) if mode == "long_only" else position
            pooled_now = pooled_position(r)
            if pooled:
                position = int(pooled_now[0]) if pooled_now is not None else 0
                record[f"pos_{POOLED}"] = max(0, position) if mode == "long_only" else position
                if pooled_now is not None:
                    pooled_exposure[r] = max(0.0, pooled_now[0]) / max_volume
            if spec.review:
                primary = spec.algorithms[0]
                served = champions[primary] if cfg.do_no_harm_gate and champions[primary] is not None else newest[primary]
                gate = served.gate.as_evidence(enforced=cfg.do_no_harm_gate)
                if cfg.do_no_harm_gate and not served.gate.passed:
                    gate["reason"] = f"no model has passed the gate yet; serving the newest: {served.gate.reason}"
                action = served.agent.act(obs, 0.0)
                agent_exposure[r] = max(0.0, float(action.action)) / max_volume
                bars_upto = bars.iloc[: int(bar_pos[r]) + 1].reset_index(drop=True)
                evidence = _evidence(cfg, bars_upto, served, action, gate, source)
                evidence["reviewer"] = reviewer_block(
                    rules, market, close, r, step=spec.step, horizon=spec.horizon, fee=fee, periods_per_year=ppy,
                    seed=cfg.seed, agent_allowed=bool(served.gate.passed) or not cfg.do_no_harm_gate,
                    allowed={POOLED: pooled_now is not None and (pooled_now[1] or not cfg.do_no_harm_gate)},
                    universe=universe.rate_at(features["date"].iloc[r]) if universe is not None else None)
                started = time.perf_counter()
                outcome = review(evidence, cfg.review)
                seconds["review"] += time.perf_counter() - started
                decision = outcome.decision
                reviewed_position = target_position(decision.action, decision.confidence, mode=mode, held=reviewed_position)
                block = evidence["reviewer"]
                record.update({
                    "pos_reviewed": int(round(reviewed_position * max_volume)), "reviewed_action": decision.action,
                    "reviewed_confidence": float(decision.confidence),
                    "reviewed_fallback": outcome.fallback_reason or "",
                    "reviewed_rule": block["rule"], "reviewed_edge": block["edge"],
                    "reviewed_why": block["edge_reason"],
                    # the calibration chosen on earlier calls (``none``: too few calls, the prior speaks)
                    "reviewed_calibration": (block["model"] or {}).get("calibration", "none"),
                    "model_suggestion": evidence["model"]["suggestion"], "served_model": served.date,
                    "served_gate_passed": bool(served.gate.passed),
                })
            previous = r
            records.append(record)
    table = pd.DataFrame(records)
    table["pos_buy_and_hold"] = buy_and_hold(n, max_volume)
    table["pos_flat"] = flat(n)
    table["pos_sma_crossover"] = sma_crossover(bars["close"], bar_pos[rows], max_volume,
                                               fast=spec.sma_fast, slow=spec.sma_slow)
    for seed in spec.random_seeds:
        table[f"pos_{random_name(seed)}"] = random_policy(n, max_volume, seed=seed, symbol=cfg.symbol,
                                                          long_only=mode == "long_only")
    return Decisions(cfg.symbol, rows, table, folds, seconds)


@dataclass
class SymbolResult:
    """Decisions plus their accounting: per-policy ledgers and metrics."""

    decisions: Decisions
    ledgers: dict[str, pd.DataFrame]
    metrics: dict[str, dict[str, float]]


def score(cfg: RunConfig, bars: pd.DataFrame, decisions: Decisions, spec: WalkForwardSpec) -> SymbolResult:
    """Replay every policy's decisions through ``simulate`` on the same bars and fees, from the
    first rebalance close to the last bar, and score them."""
    from tradeflow.features import compute_features

    features = compute_features(bars)
    rows = decisions.rebalance_rows
    first = int(rows[0])
    prices = features["close"].to_numpy(np.float64)
    dates = features["date"].to_numpy()[first:]
    # which rebalance's decision is held at each bar from the first rebalance on
    held_index = np.searchsorted(rows, np.arange(first, len(features)), side="right") - 1
    forward = np.full(len(rows), np.nan)
    ahead = rows + spec.horizon
    ok = ahead < len(prices)
    forward[ok] = prices[ahead[ok]] / prices[rows[ok]] - 1.0
    table = decisions.table
    table["forward_return"] = forward
    ledgers: dict[str, pd.DataFrame] = {}
    metrics: dict[str, dict[str, float]] = {}
    tm = cfg.trademaster
    for policy in spec.policies() + ([POOLED] if f"pos_{POOLED}" in table else []):
        targets = table[f"pos_{policy}"].to_numpy(np.int64)
        ledger = simulate(prices[first:], targets[held_index], initial_amount=tm.initial_amount,
                          transaction_cost_pct=tm.transaction_cost_pct, max_volume=tm.max_volume, dates=dates)
        result = BacktestResult.from_table(ledger)
        if policy == REVIEWED:
            direction = table["reviewed_action"].map(REVIEW_DIRECTION).to_numpy(np.int64)  # SELL bets on a fall
        else:
            direction = np.sign(targets)
        m = {k: float(result.metrics[k]) for k in ("total_return", "annualised_return", "sharpe", "sortino",
                                                    "max_drawdown", "turnover", "num_trades", "exposure")}
        m |= hit_rate(direction, forward)
        if policy == REVIEWED:
            m |= brier(direction, table["reviewed_confidence"].to_numpy(np.float64), forward)
        ledgers[policy] = ledger
        metrics[policy] = m
    return SymbolResult(decisions, ledgers, metrics)


def hit_rate(direction: np.ndarray, forward: np.ndarray) -> dict[str, float]:
    """Share of directional decisions (long or short) whose sign matched the next-``horizon``-bar
    return; decisions whose horizon runs past the data are not counted."""
    mask = (direction != 0) & np.isfinite(forward)
    hits = (direction[mask] * forward[mask]) > 0
    return {"hit_rate": float(hits.mean()) if mask.any() else float("nan"), "directional_decisions": float(mask.sum())}


def brier(direction: np.ndarray, confidence: np.ndarray, forward: np.ndarray) -> dict[str, float]:
    """Brier score of the stated confidence as the probability that a BUY/SELL call is right over
    the horizon (0 is perfect; always saying 0.5 scores 0.25)."""
    mask = (direction != 0) & np.isfinite(forward)
    hits = ((direction[mask] * forward[mask]) > 0).astype(float)
    value = float(np.mean((confidence[mask] - hits) ** 2)) if mask.any() else float("nan")
    return {"brier": value}


def evaluate_symbol(cfg: RunConfig, bars: pd.DataFrame, spec: WalkForwardSpec, *, source: str = "",
                    pooled: dict | None = None, universe: Any = None) -> SymbolResult:
    """``decide`` then ``score``: the whole walk-forward of one symbol."""
    return score(cfg, bars, decide(cfg, bars, spec, source=source, pooled=pooled, universe=universe), spec)
