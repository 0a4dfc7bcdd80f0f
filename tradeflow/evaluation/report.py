"""The evaluation report: universe table, comparisons, calibration and plots, as files (no MLflow: the
caller logs them).

Files (artifacts of the parent ``evaluate`` run, ``report/``): ``report.md`` and ``report.html``
(the same content), ``universe_table.csv`` (symbol x policy metrics), ``summary.csv`` (medians
with bootstrap intervals), ``folds.csv`` (every refit: gate, alias decision, validation and test
figures), ``decisions.csv`` (every rebalance of every symbol), ``calibration.csv``, and
``plots/sharpe_by_policy.png``, ``plots/equity_curves.png``, ``plots/reliability.png``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from tradeflow.evaluation.walkforward import SymbolResult, WalkForwardSpec

COMPARE_ORDER = ("reviewed", "agent_dqn", "agent_ppo", "agent_a2c", "agent_pooled", "buy_and_hold", "flat", "sma_crossover", "random_mean")

@dataclass
class UniverseResult:
    """Everything the report needs (``evaluate_universe`` builds it)."""

    spec: WalkForwardSpec
    per_symbol: dict[str, SymbolResult]
    failures: dict[str, str]
    table: pd.DataFrame  # long: symbol, policy, metrics
    summary: pd.DataFrame  # policy -> median (+ CI) of each headline metric
    comparisons: dict[str, dict[str, float]]
    calibration: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    calibration_scores: dict[str, float] = field(default_factory=dict)
    per_year: pd.DataFrame = field(default_factory=pd.DataFrame)


def _figure(width: float = 10, height: float = 4.5) -> tuple[Figure, object]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def policy_equity_plot(ledgers: dict[str, pd.DataFrame], title: str) -> Figure:
    """Equity of every policy (random seeds thin and grey) on one symbol."""
    figure, ax = _figure()
    for policy, ledger in ledgers.items():
        random = policy.startswith("random_s")
        ax.plot(ledger["date"], ledger["equity"] / ledger["equity"].iloc[0], label=None if random else policy,
                color="lightgrey" if random else None, linewidth=0.8 if random else 1.4, zorder=1 if random else 2)
    ax.set_title(f"{title}: out-of-sample equity (1 = start)")
    ax.set_xlabel("date")
    ax.set_ylabel("growth of 1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure



def sharpe_plot(table: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Per-symbol out-of-sample Sharpe by policy (dots) with the median and its bootstrap 95% interval."""
    figure, ax = _figure(11, 4.8)
    policies = [p for p in COMPARE_ORDER if p in set(table["policy"])]
    for i, policy in enumerate(policies):
        values = table.loc[table["policy"] == policy, "sharpe"].to_numpy()
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax.scatter(i + jitter, values, s=12, alpha=0.6)
        row = summary.loc[summary["policy"] == policy].iloc[0]
        ax.errorbar(i + 0.3, row["sharpe"], yerr=[[row["sharpe"] - row["sharpe_lo"]], [row["sharpe_hi"] - row["sharpe"]]],
                    fmt="D", color="black", capsize=4)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(policies)), policies, rotation=20)
    ax.set_ylabel("out-of-sample Sharpe")
    ax.set_title("Sharpe per symbol (dots); median with bootstrap 95% interval (black)")
    ax.grid(alpha=0.3, axis="y")
    return figure


def universe_equity_plot(per_symbol: dict[str, SymbolResult]) -> Figure:
    """Equal-weight average of the symbols' normalised equity curves, by policy."""
    figure, ax = _figure()
    curves: dict[str, list[pd.Series]] = {}
    for result in per_symbol.values():
        for policy, ledger in result.ledgers.items():
            key = "random_mean" if policy.startswith("random_s") else policy
            curves.setdefault(key, []).append(pd.Series(ledger["equity"].to_numpy() / ledger["equity"].iloc[0],
                                                        index=ledger["date"]))
    for policy in [p for p in COMPARE_ORDER if p in curves]:
        mean = pd.concat(curves[policy], axis=1).ffill().mean(axis=1)
        ax.plot(mean.index, mean.to_numpy(), label=policy, linestyle="--" if policy == "random_mean" else "-")
    ax.set_title("Universe: equal-weight mean of out-of-sample equity (1 = start)")
    ax.set_xlabel("date")
    ax.set_ylabel("growth of 1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def reliability_plot(calibration: pd.DataFrame) -> Figure:
    """Stated confidence of reviewed BUY/SELL calls against how often they were right."""
    figure, ax = _figure(5.5, 5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    if len(calibration):
        ax.scatter(calibration["mean_confidence"], calibration["hit_rate"], s=20 + 4 * calibration["count"], label="reviewed calls")
        for _, row in calibration.iterrows():
            ax.annotate(f"n={int(row['count'])}", (row["mean_confidence"], row["hit_rate"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("stated confidence")
    ax.set_ylabel("observed hit rate over the horizon")
    ax.set_title("Reliability of reviewed BUY/SELL confidence")
    ax.legend(fontsize=8, loc="upper left")
    return figure


def _fmt(value: float, pct: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:+.1%}" if pct else f"{value:.2f}"


def markdown(result: UniverseResult) -> str:
    """The report as markdown: headline, universe medians, comparisons, calibration, per symbol."""
    spec, summary = result.spec, result.summary
    by_policy = {row["policy"]: row for row in summary.to_dict(orient="records")}
    lines = ["# Walk-forward evaluation", ""]
    lines += [f"- Universe: {len(result.per_symbol)} symbols" + (f" ({len(result.failures)} failed: "
              + ", ".join(f"{s}: {r}" for s, r in result.failures.items()) + ")" if result.failures else ""),
              f"- Schedule: {spec.mode} refit every {spec.refit_every} rebalance(s), a decision every {spec.step} bars "
              f"after {spec.min_train} training bars; hit rate over the next {spec.horizon} bars",
              f"- Algorithms: {', '.join(spec.algorithms)}; random policy seeds: {', '.join(map(str, spec.random_seeds))}",
              f"- Wall time: {result.seconds.get('wall', 0):.0f} s (training {result.seconds.get('train', 0):.0f} s, "
              f"review {result.seconds.get('review', 0):.0f} s)", ""]
    lines += ["## Universe medians (bootstrap 95% interval over symbols)", "",
              "| policy | symbols | Sharpe | total return | annualised | Sortino | max drawdown | turnover | hit rate | Brier |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for policy in [p for p in COMPARE_ORDER if p in by_policy] + sorted(p for p in by_policy if p not in COMPARE_ORDER):
        row = by_policy[policy]
        ci = f" [{_fmt(row.get('sharpe_lo'))}, {_fmt(row.get('sharpe_hi'))}]"
        lines.append(f"| {policy} | {row['symbols']} | {_fmt(row.get('sharpe'))}{ci} | {_fmt(row.get('total_return'), True)} | "
                     f"{_fmt(row.get('annualised_return'), True)} | {_fmt(row.get('sortino'))} | "
                     f"{_fmt(row.get('max_drawdown'), True)} | {_fmt(row.get('turnover'))} | "
                     f"{_fmt(row.get('hit_rate'), True)} | {_fmt(row.get('brier', float('nan')))} |")
    lines += ["", "## Paired comparisons (median per-symbol Sharpe difference, bootstrap 95% interval)", "",
              "| comparison | median difference | interval | beats on |", "|---|---|---|---|"]
    for name, c in result.comparisons.items():
        lines.append(f"| {name.replace('_vs_', ' vs ')} | {_fmt(c['median_sharpe_difference'])} | "
                     f"[{_fmt(c['ci_lo'])}, {_fmt(c['ci_hi'])}] | {int(c['beats_on'])}/{int(c['symbols'])} |")
    if len(result.calibration):
        lines += ["", "## Calibration of reviewed BUY/SELL confidence", "", "| confidence | calls | mean confidence | hit rate |",
                  "|---|---|---|---|"]
        for row in result.calibration.to_dict(orient="records"):
            lines.append(f"| {row['bin']} | {int(row['count'])} | {row['mean_confidence']:.2f} | {_fmt(row['hit_rate'], True)} |")
    scores = result.calibration_scores
    if scores:
        lines += ["", f"All {int(scores['calls'])} reviewed calls: Brier {scores['brier']:.4f} (0.25 = always 0.5), "
                  f"expected calibration error {scores['ece']:.4f} (10 bins), stated {scores['mean_confidence']:.3f} on "
                  f"average, right {scores['hit_rate']:.1%}; the {int(scores['calls_0.6_0.8'])} calls stated at 0.6-0.8 "
                  f"were right {_fmt(scores['hit_rate_0.6_0.8'], True)}."]
    if len(result.per_year):
        wide = result.per_year.pivot(index="year", columns="policy", values="sharpe")
        ret = result.per_year.pivot(index="year", columns="policy", values="return")
        cols = [p for p in COMPARE_ORDER if p in wide.columns]
        lines += ["", "## Per year (median over symbols: Sharpe / return)", "",
                  "| year | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for year, row in wide.iterrows():
            lines.append(f"| {year} | " + " | ".join(f"{_fmt(row[c])} / {_fmt(ret.loc[year, c], True)}" for c in cols) + " |")
    decisions = pd.concat([r.decisions.table.assign(symbol=s) for s, r in result.per_symbol.items()], ignore_index=True)
    if "reviewed_rule" in decisions:
        counts = decisions["reviewed_rule"].value_counts()
        lines += ["", "## Which decision rule each decision served, and why", "",
                  "Chosen on earlier bars only (each rule's record before the decision, net of fees, against "
                  "buy-and-hold on the same bars); `benchmark` = no rule had a demonstrated edge. Counts: "
                  + ", ".join(f"{rule} {n}" for rule, n in counts.items()) + ". The latest decision per symbol:", "",
                  "| symbol | date | rule | action | confidence | why |", "|---|---|---|---|---|---|"]
        for symbol, group in decisions.groupby("symbol"):
            last = group.iloc[-1]
            lines.append(f"| {symbol} | {last['date']:%Y-%m-%d} | {last['reviewed_rule']} | {last['reviewed_action']} | "
                         f"{last['reviewed_confidence']:.2f} | {last['reviewed_why']} |")
        lines += ["", "Every decision's rule and reason: `decisions.csv` (`reviewed_rule`, `reviewed_why`)."]
    folds = pd.concat([pd.DataFrame(r.decisions.folds) for r in result.per_symbol.values()], ignore_index=True)
    if len(folds):
        passed = folds["gate_passed"].mean()
        lines += ["", "## Do-no-harm gate", "",
                  f"{int(folds['gate_passed'].sum())} of {len(folds)} refits ({passed:.0%}) beat buy-and-hold and flat on "
                  "their validation split. A refit that fails keeps the previous champion (if any) serving; with none, the "
                  "newest model serves, its calls are never served as the decision rule, and the decision is the "
                  "benchmark's or another rule's that beat it, labelled."]
    lines += ["", "## Per symbol (out-of-sample Sharpe)", ""]
    wide = result.table.pivot(index="symbol", columns="policy", values="sharpe")
    cols = [p for p in COMPARE_ORDER if p in wide.columns]
    lines += ["| symbol | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for symbol, row in wide.iterrows():
        lines.append(f"| {symbol} | " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    lines += ["", "Plots: `plots/sharpe_by_policy.png`, `plots/equity_curves.png`, `plots/reliability.png`."]
    return "\n".join(lines) + "\n"


def to_html(text: str) -> str:
    """Minimal markdown (headings, lists, pipe tables) to a standalone HTML page with the plots."""
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Walk-forward evaluation</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style></head><body>"]
    in_table = in_list = False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
                continue
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    for name in ("sharpe_by_policy", "equity_curves", "reliability"):
        out.append(f"<p><img src='plots/{name}.png' style='max-width:100%'></p>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(result: UniverseResult, directory: Path) -> list[Path]:
    """Write every report file into ``directory``; return their paths."""
    directory = Path(directory)
    (directory / "plots").mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    files = {"report.md": text, "report.html": to_html(text)}
    for name, content in files.items():
        (directory / name).write_text(content)
    result.table.to_csv(directory / "universe_table.csv", index=False)
    result.summary.to_csv(directory / "summary.csv", index=False)
    result.calibration.to_csv(directory / "calibration.csv", index=False)
    result.per_year.to_csv(directory / "per_year.csv", index=False)
    pd.concat([pd.DataFrame(r.decisions.folds) for r in result.per_symbol.values()], ignore_index=True).to_csv(
        directory / "folds.csv", index=False)
    pd.concat([r.decisions.table.assign(symbol=s) for s, r in result.per_symbol.items()], ignore_index=True).to_csv(
        directory / "decisions.csv", index=False)
    for name, figure in (("sharpe_by_policy", sharpe_plot(result.table, result.summary)),
                         ("equity_curves", universe_equity_plot(result.per_symbol)),
                         ("reliability", reliability_plot(result.calibration))):
        figure.savefig(directory / "plots" / f"{name}.png", dpi=110)
    return sorted(p for p in directory.rglob("*") if p.is_file())
