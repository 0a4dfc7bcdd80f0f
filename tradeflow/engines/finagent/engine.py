"""``engine=finagent``: upstream FinAgent's technical-analysis agent, calibrated, behind the ``Engine`` interface.

Upstream (akshata29/finagent @ aa7fe01, installed by ``scripts/install_finagent.sh``; import guards in
``compat``) rates a stock from the last bars: ``run_enhanced_technical_analysis`` computes
EMA 12/26 crossover, RSI 14, MACD 12/26/9, Stochastics 14/3 and ADX 14 with the ``ta`` library,
turns each into a vote (+1 bullish/oversold, -1 bearish/overbought, 0 neutral), sums them with
weight 1 each into ``probability = 0.5 + 0.5 * score / max_score`` and rates ``buy`` at >= 0.66,
``sell`` at <= 0.33, else ``hold``. That rule has no free parameters in upstream; here they are
the model:

* **train** = calibrate the five vote weights (each in ``WEIGHT_GRID``) and the buy/sell thresholds
  (``BUY_GRID`` x ``SELL_GRID``). Every bar's votes come from upstream run on the ``lookback_bars``
  bars up to and including that bar only (no look-ahead). Each config is scored on the training
  split (Sharpe of its daily returns after costs); the ``top_k`` best are re-ranked on the
  validation split, which comes after it in time (walk-forward), and the best there is kept.
  Upstream's own rule (weights 1, 0.66/0.33) is always evaluated too and reported beside it.
* **act**: upstream on the window -> votes -> calibrated probability -> rating -> target position:
  ``buy`` = +max_volume, ``sell`` = 0 (or -max_volume with ``allow_short``), ``hold`` = keep.
* **backtest**: the default ``Engine.backtest`` (the shared ``simulate`` accounting) on the
  agent's decisions, metrics vs buy-and-hold as for every engine.

The agent's saved directory is the "config package": ``finagent_config.json`` (weights, thresholds,
lookback, the calibration report, upstream repository and commit). Loading it imports upstream.

Where each part lives: the rule and its calibration maths in ``rule``, the upstream
runner in ``analyst``, the agent and its review evidence in ``agent``, this
module the engine (the calibration run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tradeflow.config import RunConfig
from tradeflow.engines.base import Engine, TrainResult, best_epoch_metrics
from tradeflow.engines.finagent.agent import FinAgentAgent
from tradeflow.engines.finagent.analyst import FinAgentAnalyst, vote_matrix
from tradeflow.engines.finagent.rule import (
    SIGNALS,
    UPSTREAM_BUY,
    UPSTREAM_SELL,
    UPSTREAM_WEIGHTS,
    Calibration,
    Candidate,
    candidate_grid,
    positions_for,
    sharpe,
    strategy_returns,
    total_return,
)
from tradeflow.errors import InputError

if TYPE_CHECKING:
    from tradeflow.engines.finagent.compat import FinAgentUpstream
    from tradeflow.features import Splits

log = logging.getLogger(__name__)


class FinAgentEngine(Engine):
    """Calibrates upstream FinAgent's technical-analysis rating rule (see the module docstring)."""

    name = "finagent"

    def __init__(self, upstream: FinAgentUpstream | None = None) -> None:
        if upstream is None:
            from tradeflow.engines.finagent.compat import import_finagent

            upstream = import_finagent()  # EngineUnavailable (one line + the install command) if absent
        self.upstream = upstream

    def training_label(self, cfg: RunConfig) -> str:
        return f"rule search {len(candidate_grid())} cand"

    def training_description(self, cfg: RunConfig) -> str:
        return (f"finagent rule search over {len(candidate_grid())} candidate rules (5 vote weights x buy/sell "
                f"thresholds) on upstream FinAgent's technical-analysis votes, {cfg.finagent.lookback_bars}-bar lookback, "
                f"top {cfg.finagent.top_k} on train re-ranked on valid; no epochs, no RL")

    def analyst(self, symbol: str) -> FinAgentAnalyst:
        return FinAgentAnalyst(self.upstream, symbol)

    def train(self, splits: Splits, cfg: RunConfig, *, progress: Callable[[dict], None] | None = None,
              workdir: Path) -> TrainResult:
        params = cfg.finagent
        window = params.lookback_bars
        for name in ("train", "valid"):
            rows = len(getattr(splits, name))
            if name == "train" and rows < window + 20:
                raise InputError(f"{cfg.symbol}: train split has {rows} rows; engine finagent needs at least "
                                 f"{window + 20} (lookback_bars {window} + 20 bars to score a rule)")
        started = time.perf_counter()
        analyst = self.analyst(cfg.symbol)
        train = splits.train.reset_index(drop=True)
        valid = pd.concat([train.tail(window - 1), splits.valid], ignore_index=True)  # history only
        votes = {"train": vote_matrix(analyst, train, window), "valid": vote_matrix(analyst, valid, window)}
        close = {"train": train["close"].to_numpy(np.float64)[window - 1:],
                 "valid": valid["close"].to_numpy(np.float64)[window - 1:]}
        analysis_seconds = time.perf_counter() - started

        cost = float(cfg.trademaster.transaction_cost_pct)
        grid = candidate_grid()
        default = Candidate(tuple(UPSTREAM_WEIGHTS[s] for s in SIGNALS), UPSTREAM_BUY, UPSTREAM_SELL)
        scored = {}
        for split in ("train", "valid"):
            returns = strategy_returns(positions_for(votes[split], grid + [default], allow_short=params.allow_short),
                                       close[split], cost)
            scored[split] = (sharpe(returns), total_return(returns))
        train_sharpe, train_return = scored["train"]
        valid_sharpe, valid_return = scored["valid"]
        # rank on train (Sharpe, then return, then grid order: deterministic), re-rank the top_k on valid
        order = sorted(range(len(grid)), key=lambda i: (-round(train_sharpe[i], 9), -round(train_return[i], 9), i))
        shortlist = order[: params.top_k]
        curve = []
        for rank, i in enumerate(shortlist, start=1):
            row = {"epoch": rank, "timesteps": len(grid) * (len(close["train"]) + len(close["valid"])),
                   "train_total_return": float(train_return[i]), "train_sharpe": float(train_sharpe[i]),
                   "valid_total_return": float(valid_return[i]), "valid_sharpe": float(valid_sharpe[i]),
                   "steps_per_s": 0.0}
            curve.append(row)
        best_rank = 1 + max(range(len(shortlist)), key=lambda r: (round(valid_sharpe[shortlist[r]], 9),
                                                                   round(valid_return[shortlist[r]], 9), -r))
        best = grid[shortlist[best_rank - 1]]
        seconds = time.perf_counter() - started
        for row in curve:
            row["steps_per_s"] = row["timesteps"] / max(seconds - analysis_seconds, 1e-9)
            if progress is not None:
                progress({**row, "epochs": len(curve)})
        calibration = Calibration(dict(zip(SIGNALS, best.weights)), best.buy, best.sell, params.allow_short)
        d = len(grid)  # the default rule's column
        report = {
            "symbol": cfg.symbol, "candidates": len(grid), "top_k": params.top_k, "lookback_bars": window,
            "objective": "train Sharpe (daily, after costs), top_k re-ranked by valid Sharpe",
            "train_bars": int(len(close["train"])), "valid_bars": int(len(close["valid"])),
            "selected": {"train_sharpe": float(train_sharpe[shortlist[best_rank - 1]]),
                         "valid_sharpe": float(valid_sharpe[shortlist[best_rank - 1]])},
            "upstream_rule": {"train_sharpe": float(train_sharpe[d]), "train_total_return": float(train_return[d]),
                              "valid_sharpe": float(valid_sharpe[d]), "valid_total_return": float(valid_return[d])},
            "upstream_calls": analyst.calls,
        }
        agent = FinAgentAgent(analyst, calibration, window=window, max_volume=cfg.trademaster.max_volume, report=report)
        agent.save(Path(workdir) / "agent")
        log.info("%s: finagent calibrated over %d rules in %.1fs (%d upstream analyses): weights %s, buy>=%.2f "
                 "sell<=%.2f; valid sharpe %.2f (upstream's rule %.2f)", cfg.symbol, len(grid), seconds,
                 analyst.calls, calibration.weights, best.buy, best.sell, report["selected"]["valid_sharpe"],
                 report["upstream_rule"]["valid_sharpe"])
        extra = {**best_epoch_metrics(curve[best_rank - 1]), "calibration_candidates": float(len(grid)),
                 "upstream_analyses": float(analyst.calls), "analysis_seconds": analysis_seconds,
                 **{f"upstream_rule_{k}": v for k, v in report["upstream_rule"].items()}}
        test = pd.concat([splits.valid.tail(window - 1), splits.test], ignore_index=True)
        default_agent = FinAgentAgent(analyst, Calibration.upstream_default(params.allow_short), window=window,
                                      max_volume=cfg.trademaster.max_volume)
        default_test = self.backtest(default_agent, test, cfg).metrics
        extra.update({f"upstream_rule_test_{k}": float(default_test[k])
                      for k in ("total_return", "sharpe", "max_drawdown", "num_trades")})
        return TrainResult(agent=agent, learning_curve=curve, best_epoch=best_rank,
                           timesteps=int(curve[0]["timesteps"]), train_seconds=time.perf_counter() - started,
                           env_steps_per_s=float(curve[0]["steps_per_s"]), extra_metrics=extra)

    def load_agent(self, directory: Path) -> FinAgentAgent:
        return FinAgentAgent.load(directory, self.upstream)
