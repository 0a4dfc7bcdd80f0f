"""Decision rules that compete to be served, their record on earlier folds, and the reviewer block.

Used by ``evaluate``'s walk-forward at every rebalance and by ``train_backtest`` (the reviewer it
fits and logs with the model, which ``inference`` puts in the evidence), so the DAG serves what was
evaluated.

Each rule gives a target exposure in ``0..1`` (long_only) at every bar from closes up to that bar:

- ``benchmark``: buy-and-hold (always long): what every other rule must beat;
- ``trend_sma50`` / ``trend_sma200``: long while the close is above its 50/200-bar average, else flat;
- ``vol_filter``: long unless the 20-bar volatility is above 1.5x its own median so far (the binary
  form of volatility targeting: decisions are whole units, BUY/SELL/HOLD, and the IBKR risk step does
  not size by them, so a fractional exposure could be evaluated but not traded);
- ``agent``: the served RL model's out-of-sample position (filled in by the walk-forward as it goes);
- ``agent_pooled`` (evaluate, 2+ symbols): the agent trained on every symbol's bars
  (``tradeflow.evaluation.pooled``), likewise out of sample and only when its gate passed.

``select`` scores every rule on the rebalance grid *before* the decision bar (monthly holds, fees on
every change, the same accounting for all) and serves the one with the best Sharpe in excess of the
benchmark's over the same bars, only if that excess is positive over at least ``MIN_RECORD_BARS``:
a rule with no demonstrated edge is not served, and the benchmark is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tradeflow import metalabel

BENCHMARK = "benchmark"
AGENT = "agent"
#: bars of earlier record a rule needs before it can be served
MIN_RECORD_BARS = 126
#: the reviewer block's ``fitted_at`` when inference fitted it (a train run without ``reviewer.json``)
INFERENCE_FITTED = ("inference: the train run holds no reviewer.json, so the reviewer was fitted on the "
                    "market rules alone from the bars inference read")


def market_rules(close: np.ndarray) -> dict[str, np.ndarray]:
    """Every non-agent rule's exposure at each bar (NaN while its window fills)."""
    c = pd.Series(close, dtype=np.float64)
    out: dict[str, np.ndarray] = {BENCHMARK: np.ones(len(c))}
    for n in (50, 200):
        sma = c.rolling(n, min_periods=n).mean()
        out[f"trend_sma{n}"] = np.where(sma.isna(), np.nan, (c > sma).astype(float))
    vol = c.pct_change().rolling(20, min_periods=20).std()
    median = vol.expanding(min_periods=60).median()
    out["vol_filter"] = np.where(median.isna() | vol.isna(), np.nan, (vol <= 1.5 * median).astype(float))
    return out


@dataclass(frozen=True)
class Record:
    rule: str
    bars: int
    sharpe: float
    benchmark_sharpe: float

    @property
    def excess(self) -> float:
        return self.sharpe - self.benchmark_sharpe


def _sharpe(daily: np.ndarray, periods_per_year: float) -> float:
    sd = daily.std()
    return float(daily.mean() / sd * math.sqrt(periods_per_year)) if len(daily) > 1 and sd > 0 else 0.0


def record(exposure: np.ndarray, close: np.ndarray, row: int, step: int, fee: float, periods_per_year: float,
           rule: str) -> Record:
    """The rule's net daily returns when acted on at the grid ``row - k*step`` (held to the next grid
    bar) over the bars before ``row`` where it is defined, against buy-and-hold on the same bars."""
    grid = np.arange(row - step, -1, -step)[::-1]
    grid = grid[np.isfinite(exposure[grid])] if len(grid) else grid
    if len(grid) < 2:
        return Record(rule, 0, 0.0, 0.0)
    start = int(grid[0])
    held = exposure[grid]
    bars = np.arange(start, row)
    which = np.searchsorted(grid, bars, side="right") - 1
    position = held[which]
    ret = close[bars + 1] / close[bars] - 1.0
    change = np.abs(np.diff(np.concatenate([[0.0], held])))
    costs = np.zeros(len(bars))
    costs[grid - start] = fee * change
    daily = position * ret - costs
    bench = ret.copy()
    bench[0] -= fee
    return Record(rule, len(bars), _sharpe(daily, periods_per_year), _sharpe(bench, periods_per_year))


def select(rules: dict[str, np.ndarray], close: np.ndarray, row: int, step: int, fee: float,
           periods_per_year: float, *, allowed: dict[str, bool] | None = None) -> tuple[str, bool, str, list[Record]]:
    """``(rule, edge, why, records)``: the served rule (``benchmark`` without an edge) and why."""
    records = [record(x, close, row, step, fee, periods_per_year, name) for name, x in rules.items() if name != BENCHMARK]
    eligible = [r for r in records if r.bars >= MIN_RECORD_BARS and (allowed or {}).get(r.rule, True)]
    best = max(eligible, key=lambda r: (r.excess, r.rule), default=None)
    if best is None or not best.excess > 0:
        why = ("no rule has a record yet" if best is None else
               f"best earlier record {best.rule}: Sharpe {best.sharpe:.2f} vs buy-and-hold {best.benchmark_sharpe:.2f} "
               f"over {best.bars} bars, net of fees")
        return BENCHMARK, False, why, records
    why = (f"{best.rule}: Sharpe {best.sharpe:.2f} vs buy-and-hold {best.benchmark_sharpe:.2f} over {best.bars} "
           "earlier bars, net of fees")
    return best.rule, True, why, records


def reviewer_block(rules: dict[str, np.ndarray], market: pd.DataFrame, close: np.ndarray, r: int, *, step: int,
                   horizon: int, fee: float, periods_per_year: float, agent_allowed: bool, seed: int,
                   allowed: dict[str, bool] | None = None,
                   universe: metalabel.UniverseRate | None = None) -> dict[str, Any]:
    """The evidence's ``reviewer`` section at rebalance ``r``: the rule chosen on earlier folds, whether it
    beat the benchmark there, its proposed side, and the meta-labeller fitted on its earlier calls whose
    horizon closed by ``r`` (nothing after bar ``r`` is read; ``universe``: the universe's record at the
    same date, for the prior)."""
    rule, edge, why, records = select(rules, close, r, step, fee, periods_per_year,
                                       allowed={AGENT: agent_allowed, **(allowed or {})})
    exposure = rules[rule]
    last = r - horizon  # the newest call whose horizon has closed at r
    model = None
    base_rate = None
    if last > 0:
        t = np.arange(0, last + 1)
        forward = close[t + horizon] / close[t] - 1.0
        X = market.iloc[t].assign(proposed_long=(exposure[t] > 0.5).astype(float))
        X.loc[~np.isfinite(exposure[t]), "proposed_long"] = np.nan
        up = (forward > 0).astype(int)
        fitted = metalabel.fit(X, up, forward, horizon=horizon, seed=seed, universe=universe)
        model = fitted.to_dict() if fitted is not None else None
        # too few calls for a meta-labeller: the prior speaks (the base rate shrunk by its independent
        # count, towards the universe's when there is one), a calibrated no-skill probability
        base_rate = float(metalabel.prior_rate(up, horizon=horizon, universe=universe))
    proposed = "BUY" if (np.isfinite(exposure[r]) and exposure[r] > 0.5) else "SELL"
    inputs = {k: round(float(v), 6) for k, v in market.iloc[r].items()} | {"proposed_long": float(proposed == "BUY")}
    return {"kind": "meta_label", "rule": rule, "edge": bool(edge), "edge_reason": why, "proposed": proposed,
            "inputs": inputs, "model": model, "base_rate": base_rate, "horizon_bars": horizon,
            "universe": None if universe is None else {"rate": round(universe.rate, 6), "symbols": universe.symbols,
                                                       "between_variance": round(universe.between_variance, 8)},
            "track_record": {rec.rule: {"bars": rec.bars, "sharpe": round(rec.sharpe, 4),
                                        "benchmark_sharpe": round(rec.benchmark_sharpe, 4)} for rec in records}}


def fitted_reviewer(close: np.ndarray, *, agent_exposure: np.ndarray | None, step: int, horizon: int, fee: float,
                    periods_per_year: float, agent_allowed: bool, seed: int,
                    universe: metalabel.UniverseRate | None = None) -> dict[str, Any]:
    """The reviewer ``train_backtest`` fits on its data and logs with the model (``reviewer.json``):
    the rule chosen on the whole history, its edge, and the meta-labeller (``universe``: the universe's
    record at the last bar, for the prior); ``inputs``/``proposed`` are filled in at inference
    (``reviewer_at``) from the bars it decides on."""
    rules = market_rules(close)
    if agent_exposure is not None:
        rules[AGENT] = agent_exposure
    last = len(close) - 1
    block = reviewer_block(rules, metalabel.feature_frame(close, periods_per_year), close, last, step=step,
                           horizon=horizon, fee=fee, periods_per_year=periods_per_year,
                           agent_allowed=agent_allowed, seed=seed, universe=universe)
    return {k: v for k, v in block.items() if k not in ("inputs", "proposed")} | {"step_bars": step}


def reviewer_at(fitted: dict[str, Any], close: np.ndarray, *, model_suggestion: str | None,
                periods_per_year: float) -> dict[str, Any]:
    """The evidence's ``reviewer`` block at the newest bar: the persisted reviewer, its inputs from
    these closes, and the side the chosen rule proposes now (the agent's: the model's suggestion)."""
    rule = str(fitted.get("rule") or BENCHMARK)
    if rule == AGENT:
        proposed = "BUY" if model_suggestion == "BUY" else "SELL"
    elif rule == BENCHMARK:
        proposed = "BUY"
    else:
        exposure = market_rules(close).get(rule)
        proposed = "BUY" if exposure is None or not np.isfinite(exposure[-1]) or exposure[-1] > 0.5 else "SELL"
    row = metalabel.feature_frame(close, periods_per_year).iloc[-1]
    inputs = {k: round(float(v), 6) for k, v in row.items()} | {"proposed_long": float(proposed == "BUY")}
    if not all(np.isfinite(list(inputs.values()))):
        return {**fitted, "proposed": proposed, "inputs": {k: v for k, v in inputs.items() if np.isfinite(v)},
                "model": None}  # too few bars for every input: the base rate speaks
    return {**fitted, "proposed": proposed, "inputs": inputs}
