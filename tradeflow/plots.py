"""Backtest figures for MLflow artifacts and the review team; they read a ``simulate`` table with dates.

``title`` names what is plotted; ``plot_title`` builds the one a person needs: symbol, split and
period, data source (SYNTHETIC said loudly) and the headline numbers. Axes carry their units.

Figures are built on the Agg canvas directly (no pyplot state), so they are safe in workers
without a display and are freed once unreferenced. Log them with ``mlflow.log_figure``.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from tradeflow.runs.formatting import pct_text


def plot_title(symbol: str, split: str, *, start: str | None, end: str | None, source: str, synthetic: bool,
               model_return: float | None, benchmark_return: float | None) -> str:
    """Two lines: what and when, then where the data came from and how the model did."""
    where = "SYNTHETIC prices (generated, not market data)" if synthetic else f"data: {_short_source(source)}"
    return (f"{symbol} {split} {start or '?'} to {end or '?'} | {where}\n"
            f"model {pct_text(model_return)} vs buy-and-hold {pct_text(benchmark_return)}")


def _short_source(source: str) -> str:
    """``csv:/long/path/dj30_2020_2021.csv`` -> ``csv:dj30_2020_2021.csv`` (titles stay readable)."""
    kind, _, rest = source.partition(":")
    if kind == "csv" and rest:
        return "csv:" + ",".join(part.rsplit("/", 1)[-1] for part in rest.split(","))
    return source if len(source) <= 60 else source[:57] + "..."


def _axes(kind: str, subject: str | None, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(10, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.set_title(f"{kind}: {subject}" if subject else kind, fontsize=10)
    ax.set_xlabel("date")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return figure, ax


def equity_plot(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Strategy equity against buy-and-hold of the same starting cash."""
    figure, ax = _axes("equity vs buy-and-hold", title, "equity (account currency)")
    ax.plot(table["date"], table["equity"], label="strategy")
    ax.plot(table["date"], table["benchmark"], label="buy-and-hold", linestyle="--")
    ax.legend()
    return figure


def drawdown_plot(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Fall of equity from its running peak, strategy and buy-and-hold."""
    figure, ax = _axes("drawdown from peak", title, "drawdown (% of peak equity)")
    benchmark = table["benchmark"] / table["benchmark"].cummax() - 1.0
    ax.fill_between(table["date"], table["drawdown"], 0.0, alpha=0.4, label="strategy")
    ax.plot(table["date"], benchmark, color="grey", linestyle="--", label="buy-and-hold")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend()
    return figure


def trades_plot(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Close price with each trade marked by the position it moved into (long, flat, short)."""
    figure, ax = _axes("trades on price", title, "close price (quote currency)")
    ax.plot(table["date"], table["price"], color="black", linewidth=1, label="close")
    trades = table[table["trade"]]
    for label, mask, marker, color in (
        ("to long", trades["position"] > 0, "^", "tab:green"),
        ("to flat", trades["position"] == 0, "o", "tab:grey"),
        ("to short", trades["position"] < 0, "v", "tab:red"),
    ):
        ax.scatter(
            trades.loc[mask, "date"], trades.loc[mask, "price"], marker=marker, color=color, label=label, zorder=3
        )
    ax.legend()
    return figure
