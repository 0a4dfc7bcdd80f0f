"""Benchmark the IBKR workflow steps against the Client Portal paper stand-in (loopback HTTP).

    .venv/bin/python bench/bench_ibkr.py [--n 20] [--threads 8] [--json bench/results/ibkr.json]

Per step, the median of ``n`` runs on real AAPL bars (TradeMaster dj30 2020-2021): market data
(search + history), indicators, chart, signal (the AutoGen team with the rules client), risk
(account summary + positions + sizing), order placement (lookup, submit, one confirmation reply)
and a retried placement (the lookup that finds it). Then ``threads`` concurrent placements of the
SAME cOID (must give one order) and of distinct ones (orders per second). The gateway is local,
so the numbers are our client's and the workflow's cost, not IBKR's network latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _common  # noqa: E402,F401 - loads tests/support as the package ``testkit`` (by file path)
import pandas as pd  # noqa: E402

from testkit.data import DJ30_DIR as DJ30  # noqa: E402
from testkit.data import trademaster_bars  # noqa: E402
from testkit.ibkr_gateway import IBKRGateway  # noqa: E402
from tradeflow.ibkr import workflow as wf  # noqa: E402
from tradeflow.ibkr.orders import OrderTicket  # noqa: E402
from tradeflow.ibkr.strategy import parse_strategy  # noqa: E402

AS_OF = "2021-12-15T15:00:00Z"


def median_ms(fn, n: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(n):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bars = {"AAPL": pd.concat([trademaster_bars(DJ30 / "valid.csv", "AAPL"), trademaster_bars(DJ30 / "test.csv", "AAPL")])}
    strategy = parse_strategy({"name": "bench", "symbols": ["AAPL"], "risk": {"max_position_pct": 0.5,
                                                                              "max_total_exposure_pct": 2.0}})
    at = wf.parse_as_of(AS_OF)
    out: dict[str, object] = {"n": args.n, "load_before": os.getloadavg()}
    with IBKRGateway(bars=bars) as gw:
        os.environ["IBKR_API_URL"] = gw.url
        client = wf.open_client(strategy)
        steps: dict[str, float] = {}
        steps["market_data"], md = median_ms(lambda: wf.market_data(strategy, "AAPL", client, as_of=at), args.n)
        steps["indicators"], ind = median_ms(lambda: wf.indicators(md), args.n)
        scratch = Path(tempfile.mkdtemp())
        steps["chart"], _ = median_ms(lambda: wf.chart(md, ind, scratch), args.n)
        steps["signal_rules_review"], sig = median_ms(lambda: wf.signal(strategy, md), max(3, args.n // 4))
        steps["risk"], decision = median_ms(lambda: wf.risk(strategy, sig, ind, client), args.n)
        counter = iter(range(10**6))
        steps["order_place"], _ = median_ms(lambda: client.place_order(OrderTicket(
            symbol="AAPL", conid=md["conid"], side="BUY", quantity=1, coid=f"bench-{next(counter)}")), args.n)
        steps["order_retry_lookup"], again = median_ms(lambda: client.place_order(OrderTicket(
            symbol="AAPL", conid=md["conid"], side="BUY", quantity=1, coid="bench-0")), args.n)
        assert again.already_placed
        out["steps_median_ms"] = {k: round(v, 2) for k, v in steps.items()}

        def burst(coids: list[str]) -> float:
            started = time.perf_counter()
            threads = [threading.Thread(target=lambda c=c: wf.open_client(strategy).place_order(
                OrderTicket(symbol="AAPL", conid=md["conid"], side="BUY", quantity=1, coid=c))) for c in coids]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - started

        before = len(gw.orders())
        same = burst(["bench-same"] * args.threads)
        out["same_coid_burst"] = {"threads": args.threads, "orders_placed": len(gw.orders()) - before, "seconds": round(same, 3)}
        before = len(gw.orders())
        distinct = burst([f"bench-d{i}" for i in range(args.threads)])
        placed = len(gw.orders()) - before
        out["distinct_coid_burst"] = {"threads": args.threads, "orders_placed": placed, "seconds": round(distinct, 3),
                                      "orders_per_s": round(placed / distinct, 1)}
    out["load_after"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
