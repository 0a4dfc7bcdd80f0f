"""Quality vs training budget: the walk-forward at several epoch budgets, chosen on validation only.

    .venv/bin/python bench/bench_evaluate.py [--symbols AAPL,JPM,KO,CVX,WMT,DIS] [--epochs 1,3,8] [--out DIR]

For each budget the same walk-forward as ``evaluate`` runs on the symbols (same dates, fees and
seeds). The *selection* figure is the median over every refit of the validation return in excess
of buy-and-hold (``valid_total_return - valid_benchmark_total_return``): it uses only data each
refit saw. The out-of-sample Sharpe of the agent and of the reviewed decision are reported beside
it, and must not be used to pick the budget (that would be look-ahead at the meta level).
Prints a markdown table and writes ``budget_sweep.json`` to ``--out``; quotes the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import DJ30  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--symbols", default="AAPL,JPM,KO,CVX,WMT,DIS")
    p.add_argument("--epochs", default="1,3,8")
    p.add_argument("--refit_every", type=int, default=3)
    p.add_argument("--out", default="bench_out")
    args = p.parse_args()

    from tradeflow.config import resolve_config
    from tradeflow.data import load_market_data
    from tradeflow.evaluation import WalkForwardSpec, evaluate_symbol

    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    spec = WalkForwardSpec(refit_every=args.refit_every)
    bars = {s: load_market_data(resolve_config({"symbol": s, "data_source": DJ30})).bars for s in symbols}
    rows = []
    for epochs in (int(e) for e in args.epochs.split(",")):
        started = time.perf_counter()
        folds, agent, reviewed, hold = [], [], [], []
        for symbol in symbols:
            cfg = resolve_config({"symbol": symbol, "data_source": DJ30, "epochs": epochs})
            result = evaluate_symbol(cfg, bars[symbol], spec)
            folds += result.decisions.folds
            agent.append(result.metrics["agent_dqn"]["sharpe"])
            reviewed.append(result.metrics["reviewed"]["sharpe"])
            hold.append(result.metrics["buy_and_hold"]["sharpe"])
        frame = pd.DataFrame(folds)
        rows.append({
            "epochs": epochs,
            "refits": len(frame),
            "train_seconds_per_refit": float(frame["train_seconds"].mean()),
            "selection_median_valid_excess": float((frame["valid_total_return"] - frame["valid_benchmark_total_return"]).median()),
            "gate_pass_rate": float(frame["gate_passed"].mean()),
            "oos_median_sharpe_agent": float(np.median(agent)),
            "oos_median_sharpe_reviewed": float(np.median(reviewed)),
            "oos_median_sharpe_buy_and_hold": float(np.median(hold)),
            "wall_seconds": time.perf_counter() - started,
            "load": os.getloadavg()[0],
        })
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["selection_median_valid_excess"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget_sweep.json").write_text(json.dumps({"symbols": symbols, "rows": rows, "chosen_on_validation": best["epochs"]}, indent=2))
    print(f"\nsymbols {','.join(symbols)}; refit every {args.refit_every}; load {os.getloadavg()}")
    print("| epochs | refits | train s/refit | median valid excess (selection) | gate pass | OOS Sharpe agent | OOS Sharpe reviewed | OOS Sharpe buy-and-hold |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epochs']} | {r['refits']} | {r['train_seconds_per_refit']:.1f} | {r['selection_median_valid_excess']:+.2%} | "
              f"{r['gate_pass_rate']:.0%} | {r['oos_median_sharpe_agent']:.2f} | {r['oos_median_sharpe_reviewed']:.2f} | "
              f"{r['oos_median_sharpe_buy_and_hold']:.2f} |")
    print(f"chosen on validation only: epochs={best['epochs']}")


if __name__ == "__main__":
    main()
