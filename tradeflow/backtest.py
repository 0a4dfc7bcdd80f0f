"""Backtest accounting and performance metrics: the one ledger that both training and backtests use.

Timing convention (the same in the RL environment): at each bar's close the equity is marked with
the position carried into the bar, then the decision taken at that close is traded at the close
price and held until the next close. The last bar's decision is recorded (it is the live
recommendation) but not traded, since no later price exists to mark it.

Fees are ``transaction_cost_pct`` of the traded notional, debited from cash, on buys and sells
alike. A short of ``u`` units at ``p0`` credits ``u * p0`` (less the fee) to cash and is marked as
``cash - u * p_t``, so it gains when the price falls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

PositionSizing = Literal["equity_fraction", "units"]


class Account:
    """Cash and units of one asset: the single place where trades are sized, priced and charged.

    ``target`` is an integer in ``-max_volume..max_volume``. With ``equity_fraction`` sizing it
    means "hold ``target / max_volume`` of the equity", converted to units at the trade price
    when the target changes and then held as a constant number of units (so a constant target is
    buy-and-hold, not a daily rebalance). With ``units`` sizing it is a number of units, as in
    TradeMaster. No margin model: cash may go below zero by the fees of a fully invested position.
    """

    __slots__ = ("initial_amount", "cost_pct", "max_volume", "_fraction_sizing", "cash", "units", "target")

    def __init__(
        self,
        *,
        initial_amount: float,
        transaction_cost_pct: float,
        max_volume: int,
        position_sizing: PositionSizing = "equity_fraction",
    ) -> None:
        if position_sizing not in ("equity_fraction", "units"):
            raise ValueError(f"position_sizing must be 'equity_fraction' or 'units', not {position_sizing!r}")
        self.initial_amount = float(initial_amount)
        self.cost_pct = float(transaction_cost_pct)
        self.max_volume = int(max_volume)
        self._fraction_sizing = position_sizing == "equity_fraction"
        self.reset()

    def reset(self) -> None:
        """Back to all cash, flat."""
        self.cash = self.initial_amount
        self.units = 0.0
        self.target = 0

    def equity(self, price: float) -> float:
        """Cash plus the position marked at ``price`` (a short subtracts its buy-back value)."""
        return self.cash + self.units * price

    def rebalance(self, target: int, price: float) -> float:
        """Trade at ``price`` so that ``target`` is held; return the fee paid.

        An account without positive equity can only go flat: a ruined account stops trading
        instead of levering up its losses.
        """
        equity = self.cash + self.units * price
        if equity <= 0.0:
            target = 0
        if target == self.target:
            return 0.0
        if self._fraction_sizing:
            new_units = target / self.max_volume * equity / price
        else:
            new_units = float(target)
        traded = new_units - self.units
        fee = abs(traded) * price * self.cost_pct
        self.cash -= traded * price + fee
        self.units = new_units
        self.target = target
        return fee


def simulate(
    prices: np.ndarray,
    target_positions: np.ndarray,
    *,
    initial_amount: float,
    transaction_cost_pct: float,
    max_volume: int,
    position_sizing: PositionSizing = "equity_fraction",
    dates: np.ndarray | pd.Series | None = None,
) -> pd.DataFrame:
    """Replay decided target positions over close prices through an ``Account``.

    Returns one row per bar: ``price``; ``action`` (the target decided at that close);
    ``position`` (the target actually held after that close, as a fraction ``target/max_volume``);
    ``units`` and ``cash`` after the trade; ``equity`` marked at the close before the trade;
    ``benchmark`` (buy-and-hold from the first close, no fees); ``drawdown`` (``equity/peak - 1``,
    <= 0); ``trade`` (units changed) and ``cost`` (fee paid). ``date`` first when ``dates`` given.
    """
    prices = np.asarray(prices, dtype=np.float64)
    targets = np.asarray(target_positions)
    n = len(prices)
    if n == 0 or targets.shape != prices.shape:
        raise ValueError(f"need one target per price and at least one bar (got {targets.shape} and {prices.shape})")
    if not np.all(np.isfinite(prices)) or np.any(prices <= 0):
        raise ValueError("prices must be finite and positive")
    if not np.array_equal(targets, np.round(targets)):
        raise ValueError("target positions must be whole numbers")
    targets = targets.astype(np.int64)
    if position_sizing == "equity_fraction" and np.any(np.abs(targets) > max_volume):
        raise ValueError(f"target positions must lie in -{max_volume}..{max_volume}")

    account = Account(
        initial_amount=initial_amount,
        transaction_cost_pct=transaction_cost_pct,
        max_volume=max_volume,
        position_sizing=position_sizing,
    )
    equity = np.empty(n)
    units = np.empty(n)
    cash = np.empty(n)
    held = np.empty(n, dtype=np.int64)
    cost = np.zeros(n)
    for t in range(n):
        equity[t] = account.equity(prices[t])
        if t < n - 1:
            cost[t] = account.rebalance(int(targets[t]), float(prices[t]))
        units[t], cash[t], held[t] = account.units, account.cash, account.target

    columns: dict[str, np.ndarray | pd.Series] = {}
    if dates is not None:
        columns["date"] = pd.to_datetime(np.asarray(dates))
    columns |= {
        "price": prices,
        "action": targets,
        "position": held / max_volume,
        "units": units,
        "cash": cash,
        "equity": equity,
        "benchmark": initial_amount * prices / prices[0],
        "drawdown": equity / np.maximum.accumulate(equity) - 1.0,
        "trade": np.diff(units, prepend=0.0) != 0.0,
        "cost": cost,
    }
    return pd.DataFrame(columns)


def periods_per_year_for(dates: pd.Series | pd.DatetimeIndex | np.ndarray) -> int:
    """365 for series that trade on weekends (crypto), else 252 (exchange days)."""
    index = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates)))
    return 365 if len(index) and bool((index.dayofweek >= 5).any()) else 252


def bar_returns(equity: np.ndarray) -> np.ndarray:
    """Simple returns between consecutive marks; 0 once equity is not positive (nothing at stake)."""
    equity = np.asarray(equity, dtype=np.float64)
    previous = equity[:-1]
    safe = np.where(previous > 0, previous, 1.0)
    return np.where(previous > 0, equity[1:] / safe - 1.0, 0.0)


def _return_metrics(equity: np.ndarray, periods_per_year: int) -> dict[str, float]:
    periods = len(equity) - 1
    growth = float(equity[-1] / equity[0])
    returns = bar_returns(equity)
    if periods < 1:
        annualised = 0.0
    elif growth <= 0:
        annualised = -1.0
    else:
        annualised = growth ** (periods_per_year / periods) - 1.0
    std = float(np.std(returns, ddof=1)) if periods >= 2 else 0.0
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2))) if periods else 0.0
    mean = float(np.mean(returns)) if periods else 0.0
    root = math.sqrt(periods_per_year)
    max_drawdown = float(np.min(equity / np.maximum.accumulate(equity) - 1.0))
    return {
        "total_return": growth - 1.0,
        "annualised_return": annualised,
        "annualised_volatility": std * root,
        "sharpe": mean / std * root if std > 1e-12 else 0.0,
        "sortino": mean / downside * root if downside > 1e-12 else 0.0,
        "calmar": annualised / -max_drawdown if max_drawdown < -1e-12 else 0.0,
        "max_drawdown": max_drawdown,
    }


def performance_metrics(
    equity: pd.Series | np.ndarray,
    positions: pd.Series | np.ndarray,
    trades: pd.Series | np.ndarray,
    periods_per_year: int,
    *,
    benchmark: pd.Series | np.ndarray | None = None,
) -> dict[str, float]:
    """Strategy metrics from an equity curve marked once per bar (risk-free rate 0).

    ``positions[t]`` is the exposure fraction held from bar ``t`` to ``t+1`` and ``trades[t]``
    whether bar ``t`` traded. ``max_drawdown`` is a negative fraction (-0.25 = a 25% fall from
    peak). ``win_rate`` is the fraction of bars held exposed whose return was positive;
    ``exposure`` the fraction of bars held exposed; ``turnover`` the summed absolute change of
    the position fraction, annualised (a long-to-short flip counts 2). With ``benchmark`` (the
    buy-and-hold equity) the same return metrics come as ``benchmark_*`` and the strategy's
    surplus as ``excess_total_return`` / ``excess_annualised_return``. Every value is finite.
    """
    equity = np.asarray(equity, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    if len(equity) == 0 or equity[0] <= 0 or positions.shape != equity.shape:
        raise ValueError("need a non-empty equity curve starting positive and one position per bar")
    metrics = _return_metrics(equity, periods_per_year)
    periods = len(equity) - 1
    held = positions[:-1]
    exposed = held != 0
    returns = bar_returns(equity)
    metrics |= {
        "win_rate": float(np.mean(returns[exposed] > 0)) if exposed.any() else 0.0,
        "num_trades": float(np.count_nonzero(np.asarray(trades, dtype=bool))),
        "turnover": float(np.abs(np.diff(held, prepend=0.0)).sum() * periods_per_year / periods) if periods else 0.0,
        "exposure": float(np.mean(exposed)) if periods else 0.0,
    }
    if benchmark is not None:
        reference = _return_metrics(np.asarray(benchmark, dtype=np.float64), periods_per_year)
        metrics |= {f"benchmark_{key}": value for key, value in reference.items()}
        for key in ("total_return", "annualised_return"):
            metrics[f"excess_{key}"] = metrics[key] - reference[key]
    return metrics


@dataclass(frozen=True)
class BacktestResult:
    """A simulated run: the per-bar ledger (``simulate``'s columns, ``date`` first) and its metrics."""

    table: pd.DataFrame
    metrics: dict[str, float]

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> BacktestResult:
        """Score a ``simulate`` table; bars per year are inferred from its dates."""
        metrics = performance_metrics(
            table["equity"],
            table["position"],
            table["trade"],
            periods_per_year_for(table["date"]),
            benchmark=table["benchmark"],
        )
        return cls(table=table, metrics=metrics)
