"""Driving the DAG's orchestration functions without Airflow, with ``--parallel`` worker processes
per DAG run (what ``max_active_tis_per_dagrun = TRADEFLOW_PARALLEL_SYMBOLS`` gives a real
executor; ``airflow dags test`` runs mapped tasks one at a time)::

    python -m tests.support.load dag-run --run-id load-1 --parallel 2 [--symbol AAPL ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .env import DAG_ID, REPO, subprocess_env


def _context(run_id: str, map_index: int = -1, task_id: str = "", try_number: int = 1):
    from tradeflow import orchestration as orch

    return orch.RunContext(dag_id=DAG_ID, run_id=run_id, conf={}, params={}, task_id=task_id,
                           map_index=map_index, try_number=try_number)


def _cmd_run_symbol(args: argparse.Namespace) -> int:
    """One mapped ``run_symbol`` task instance, as a separate process (an executor slot)."""
    from tradeflow import orchestration as orch

    target, parent = json.loads(args.target), json.loads(args.parent)
    ctx = _context(args.run_id, args.map_index, orch.RUN_SYMBOL_TASK)
    try:
        result = orch.run_symbol(target, parent, ctx)
    except Exception as exc:  # Airflow would mark the task failed
        print(json.dumps({"symbol": target["symbol"], "error": " ".join(str(exc).split())}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


def _cmd_dag_run(args: argparse.Namespace) -> int:
    """resolve_targets -> open_dag_run -> run_symbol x N with ``--parallel`` slots -> finalize."""
    from tradeflow import orchestration as orch

    ctx = _context(args.run_id)
    if args.symbol:
        targets = [{"symbol": s.upper(), "link_config": None, "conid": None, "workflow_symbol_id": None,
                    "priority": None} for s in args.symbol]
    else:
        targets = orch.resolve_targets(_context(args.run_id, task_id=orch.RESOLVE_TASK))
    parent = orch.open_dag_run(targets, ctx)
    results: list[dict[str, Any] | None] = [None] * len(targets)
    states: dict[int, str] = {}
    pending = list(enumerate(targets))
    running: dict[int, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            index, target = pending.pop(0)
            cmd = [sys.executable, "-m", "tests.support.load", "run-symbol", "--run-id", args.run_id,
                   "--map-index", str(index), "--target", json.dumps(target), "--parent", json.dumps(parent)]
            running[index] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
        time.sleep(0.2)
        for index, proc in list(running.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read() if proc.stdout else ""
            last = [line for line in out.splitlines() if line.startswith("{")]
            payload = json.loads(last[-1]) if last else {}
            states[index] = "success" if proc.returncode == 0 else "failed"
            results[index] = payload if proc.returncode == 0 else None
            del running[index]
    try:
        summary = orch.finalize(targets, parent, results, _context(args.run_id, task_id="finalize"),
                                task_states=states)
    except Exception as exc:
        print(json.dumps({"run_id": args.run_id, "parent": parent, "failed": " ".join(str(exc).split())}), flush=True)
        return 1
    print(json.dumps({"run_id": args.run_id, "parent": parent, **summary}), flush=True)
    return 0


def drive_dag_run(run_id: str, *, parallel: int, env: Mapping[str, str], symbols: Sequence[str] = (),
                  timeout: float = 900) -> subprocess.Popen:
    """Start ``python -m tests.support.load dag-run`` (returns the process; read its stdout)."""
    cmd = [sys.executable, "-m", "tests.support.load", "dag-run", "--run-id", run_id, "--parallel", str(parallel)]
    for symbol in symbols:
        cmd += ["--symbol", symbol]
    return subprocess.Popen(cmd, env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(REPO))


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="python -m tests.support.load", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run-symbol", help="one run_symbol task instance")
    one.add_argument("--run-id", required=True)
    one.add_argument("--map-index", type=int, default=0)
    one.add_argument("--target", required=True)
    one.add_argument("--parent", required=True)
    many = sub.add_parser("dag-run", help="a whole DAG run with --parallel symbol slots")
    many.add_argument("--run-id", required=True)
    many.add_argument("--parallel", type=int, default=2)
    many.add_argument("--symbol", action="append", default=[], help="skip resolve_targets; run these")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"run-symbol": _cmd_run_symbol, "dag-run": _cmd_dag_run}[args.command](args)
