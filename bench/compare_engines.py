"""The engines side by side: same symbols, same bars, same split, same ledger, vs buy-and-hold.

Each engine runs in the environment that has it (upstreams are not importable together with
nothing else): one call per engine writes one JSON file, ``--table`` joins them into the markdown
table of docs/engine.md::

    .venv/bin/python    bench/compare_engines.py --engine builtin     --out bench/results/cmp_builtin.json
    .venv-tm/bin/python bench/compare_engines.py --engine trademaster --out bench/results/cmp_trademaster.json
    .venv-fa/bin/python bench/compare_engines.py --engine finagent    --out bench/results/cmp_finagent.json
    .venv/bin/python    bench/compare_engines.py --table bench/results/cmp_*.json

Training and the backtests are the train step's own compute half (``compute_train``): the test
split is traded from its first bar to its last through ``tradeflow.backtest.simulate`` for every
engine (TradeMaster: unit-sized positions, so the table also gives the capital invested).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DJ30 = REPO.parent / "shared" / "data" / "trademaster" / "portfolio_management" / "dj30"
SOURCE = f"csv:{DJ30 / 'valid.csv'},{DJ30 / 'test.csv'}"


def measure(engine_name: str, symbol: str, layer: dict) -> dict:
    from tradeflow.config import resolve_config
    from tradeflow.data import load_market_data
    from tradeflow.engines import get_engine
    from tradeflow.features import compute_features, split_for_run
    from tradeflow.steps.train_backtest import compute_train

    cfg = resolve_config({"symbol": symbol, "data_source": SOURCE, "engine": engine_name, **layer})
    engine = get_engine(engine_name)
    market = load_market_data(cfg)
    splits = split_for_run(compute_features(market.bars), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = compute_train(splits, cfg, engine=engine, workdir=Path(tmp))
    table = outcome.backtests["test"].table
    m = outcome.metrics
    invested = np.abs(table["units"] * table["price"]) / table["equity"].where(table["equity"] > 0)
    row = {
        "engine": engine_name + (" (preset upstream)" if layer.get("preset") == "upstream" else ""),
        "symbol": symbol, "test_start": str(table["date"].iloc[0])[:10], "test_end": str(table["date"].iloc[-1])[:10],
        "bars": len(table), "training": engine.training_label(cfg), "implementation": engine.provenance().label,
        "train_seconds": round(outcome.train_seconds, 2),
        **{k: float(m[f"test_{k}"]) for k in ("total_return", "sharpe", "max_drawdown", "num_trades", "exposure",
                                               "benchmark_total_return", "excess_total_return")},
        "valid_total_return": float(m["valid_total_return"]), "gate": "passed" if outcome.gate.passed else "failed",
        "mean_invested": float(invested.mean()), "max_invested": float(invested.max()),
    }
    for key in ("upstream_test_total_return", "upstream_rule_test_total_return"):
        if key in m:
            row[key] = float(m[key])
    return row


def table(paths: list[str]) -> str:
    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    rows.sort(key=lambda r: (r["symbol"], r["engine"]))
    out = ["| symbol | test window (bars) | engine | training | total return | buy-and-hold | Sharpe | max DD "
           "| trades | exposure | capital invested mean / max | valid gate |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['symbol']} | {r['test_start']} → {r['test_end']} ({r['bars']}) | {r['engine']} | {r['training']} "
                   f"| {r['total_return']:+.2%} | {r['benchmark_total_return']:+.2%} | {r['sharpe']:.2f} "
                   f"| {r['max_drawdown']:.2%} | {int(r['num_trades'])} | {r['exposure']:.2f} "
                   f"| {r['mean_invested']:.1%} / {r['max_invested']:.1%} | {r['gate']} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("builtin", "trademaster", "finagent"))
    p.add_argument("--symbols", default="AAPL,MSFT,JPM")
    p.add_argument("--preset", choices=("tradeflow", "upstream"), default="tradeflow")
    p.add_argument("--out")
    p.add_argument("--table", nargs="+")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    layer = {"preset": args.preset} if args.preset == "upstream" else {}
    rows = [measure(args.engine, s.strip().upper(), layer) for s in args.symbols.split(",")]
    text = json.dumps(rows, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
