"""One ``pipeline`` run (mode both, default bounded config, rules reviewer): wall time by stage,
and the overhead of each ``mlflow.projects.run`` stage versus running the same stage's code
directly (``python -m entrypoints.<stage>`` with the same parameters). Goal: overhead at most
15 % or 1.5 s per stage. Also the peak RSS of the largest process.

    .venv/bin/python bench/bench_pipeline.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import sys

from _common import DJ30, fresh_store, machine, median, mlflow_run_cmd, run_timed

STAGES = ("train_backtest", "inference", "review", "persist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    from tradeflow.projects import recorded_params

    uri = fresh_store()
    env = {"MLFLOW_TRACKING_URI": uri}
    client = MlflowClient(uri)
    totals, via_project, direct, peaks = [], {s: [] for s in STAGES}, {s: [] for s in STAGES}, []
    for attempt in range(args.repeat):
        timed = run_timed(mlflow_run_cmd("pipeline", {"symbol": "AAPL", "data_source": DJ30, "force": "true",
                                                      "execution_id": f"bench-{attempt}"}), env=env)
        if timed.returncode != 0:
            raise SystemExit(f"pipeline failed:\n{timed.stderr[-3000:]}")
        totals.append(timed.seconds)
        peaks.append(timed.peak_rss_mib)
        parent = client.search_runs(["1"], f"tags.`tradeflow.execution_id` = 'bench-{attempt}' and tags.`tradeflow.stage` = 'pipeline'")[0]
        for stage in STAGES:
            via_project[stage].append(parent.data.metrics[f"stage_{stage}_seconds"])
            child = client.get_run(parent.data.tags[f"tradeflow.stage.{stage}.run_id"])
            params = {k: v for k, v in recorded_params(child.data.params).items() if "." not in k and v != ""}
            cmd = [sys.executable, "-m", f"entrypoints.{stage}"] + [f"--{k}={v}" for k, v in params.items()]
            again = run_timed(cmd, env=env)
            if again.returncode != 0:
                raise SystemExit(f"direct {stage} failed:\n{again.stderr[-2000:]}")
            direct[stage].append(again.seconds)
    print(f"pipeline AAPL mode=both (dj30 2020-2021, epochs 3, rules reviewer) on {machine()}, {args.repeat} run(s)")
    print(f"  total wall {median(totals):.1f} s, peak RSS {median(peaks):.0f} MiB")
    print(f"  {'stage':15} {'projects.run':>12} {'direct':>8} {'overhead':>9} {'ratio':>6}  goal <=15% or <=1.5 s")
    for stage in STAGES:
        a, b = median(via_project[stage]), median(direct[stage])
        over = a - b
        ok = over <= 1.5 or over <= 0.15 * b
        print(f"  {stage:15} {a:11.1f}s {b:7.1f}s {over:8.1f}s {a / b:6.2f}  {'OK' if ok else 'MISSED'}")
    print(f"  store {uri} (delete when done)")


if __name__ == "__main__":
    main()
