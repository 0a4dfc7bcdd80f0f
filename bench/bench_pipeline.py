"""One ``pipeline`` run (mode both, default bounded config, rules reviewer) through ``mlflow run``:
wall and CPU time by stage, the overhead of each ``mlflow.projects.run`` stage versus running the
same stage's code directly (``python -m entrypoints.<stage>`` with the same parameters), the gaps
between stages (cache look-up, lease, hand-off), the seconds from ``mlflow run`` starting to the
pipeline's run starting, and the peak RSS of the largest process.

In the same run, before each pipeline, the import floor: ``python -c "import mlflow, torch,
stable_baselines3"``; the pipeline's wall is reported as a multiple of it. Goals (issue 26): one
symbol <= 12 s and <= 2.5 x the floor, each stage's overhead <= 0.5 s, each gap <= 0.2 s.

With ``--baseline DIR`` (a checkout of an older commit, e.g. ``git worktree add ../base <commit>``),
the same measurement runs for DIR and for this checkout, alternating, in one process with one
interpreter (this one's environment), so the two are compared under the same load.

    .venv/bin/python bench/bench_pipeline.py [--repeat 3] [--baseline ../i13-base] [--cold]

A checkout with the shared warm process (issue 26) keeps it between its pipelines: the first run
starts it, later runs within ``TRADEFLOW_FORK_SERVER_IDLE_S`` find it warm; the report says which
runs were which. ``--cold`` retires it before each pipeline.

CPU seconds (user + system of every process) are reported beside wall seconds: on a shared,
loaded machine they move far less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import time

from _common import DJ30, REPO, fresh_store, import_floor, machine, median, mlflow_run_cmd, run_timed

STAGES = ("train_backtest", "inference", "review", "persist")


def shared_servers(project: Path, *, retire: bool) -> int:
    """How many shared warm processes of ``project`` are up (issue 26; a checkout without them: 0);
    ``retire``: retire them first, so the pipeline starts cold."""
    from tradeflow.runs.forkserver import shared_dir, shared_key, stop_shared

    if retire:
        stop_shared(project)
        time.sleep(1.5)  # each exits within its 1 s poll once its socket is gone
    return len(list(shared_dir().glob(f"{shared_key(project, [], [], {})[0]}-*.sock")))


def measure(project: Path, attempt: int, uri: str, *, cold: bool = False) -> dict:
    """One pipeline through ``mlflow run`` in ``project``, then each stage again, directly."""
    from mlflow.tracking import MlflowClient

    from tradeflow.runs.tracking import recorded_params

    env = {"MLFLOW_TRACKING_URI": uri}
    client = MlflowClient(uri)
    execution = f"bench-{project.name}-{attempt}"
    load_before = os.getloadavg()[0]
    floor = import_floor(env)
    warm = shared_servers(project, retire=cold) > 0
    started = time.time()
    timed = run_timed(mlflow_run_cmd("pipeline", {"symbol": "AAPL", "data_source": DJ30, "force": "true",
                                                  "execution_id": execution}, project=project), env=env, cwd=project)
    if timed.returncode != 0:
        raise SystemExit(f"{project}: pipeline failed:\n{timed.stderr[-3000:]}")
    out = {"total": timed.seconds, "total_cpu": timed.cpu_seconds, "peak": timed.peak_rss_mib,
           "floor": floor.seconds, "load": (load_before + os.getloadavg()[0]) / 2,
           "via": {}, "direct": {}, "direct_cpu": {}, "gap": {}, "server_warm": warm}
    parent = client.search_runs(["1"], f"tags.`tradeflow.execution_id` = '{execution}' and tags.`tradeflow.stage` = 'pipeline'")[0]
    out["to_pipeline"] = parent.info.start_time / 1000 - started  # `mlflow run` CLI up to the pipeline's run
    out["stage_processes"] = parent.data.tags.get("tradeflow.stage_processes", "(not tagged)")
    previous_end = None
    for stage in STAGES:
        out["via"][stage] = parent.data.metrics[f"stage_{stage}_seconds"]
        child = client.get_run(parent.data.tags[f"tradeflow.stage.{stage}.run_id"])
        if previous_end is not None:  # from the last stage's end to this one's start: look-up, lease, hand-off
            out["gap"][stage] = (child.info.start_time - previous_end) / 1000
        previous_end = child.info.end_time
        params = {k: v for k, v in recorded_params(child.data.params).items() if "." not in k and v != ""}
        cmd = [sys.executable, "-m", f"entrypoints.{stage}"] + [f"--{k}={v}" for k, v in params.items()]
        again = run_timed(cmd, env=env, cwd=project)
        if again.returncode != 0:
            raise SystemExit(f"{project}: direct {stage} failed:\n{again.stderr[-2000:]}")
        out["direct"][stage] = again.seconds
        out["direct_cpu"][stage] = again.cpu_seconds
    return out


def report(label: str, rows: list[dict]) -> None:
    runs = ", ".join(f"{r['total']:.1f}" for r in rows)
    total, floor = median([r["total"] for r in rows]), median([r["floor"] for r in rows])
    ratio = median([r["total"] / r["floor"] for r in rows])
    print(f"  [{label}] total wall {total:.1f} s (runs: {runs}), CPU {median([r['total_cpu'] for r in rows]):.1f} s, "
          f"peak RSS {median([r['peak'] for r in rows]):.0f} MiB, load during runs {median([r['load'] for r in rows]):.1f}")
    floors = ", ".join(f"{r['floor']:.1f}" for r in rows)
    print(f"    import floor {floor:.1f} s (runs: {floors}); "
          f"pipeline / floor {ratio:.2f} (median of per-run ratios); goals <= 12 s: {'OK' if total <= 12 else 'MISSED'}, "
          f"<= 2.5 x floor: {'OK' if ratio <= 2.5 else 'MISSED'}")
    warm = [r for r in rows if r.get("server_warm")]
    cold = [r for r in rows if not r.get("server_warm")]
    if warm:  # issue 26: a checkout's shared warm process was up before the run (an earlier pipeline's)
        print(f"    shared warm process up before the run: {len(warm)} of {len(rows)}; median wall cold "
              f"{median([r['total'] for r in cold]) if cold else float('nan'):.1f} s ({len(cold)} runs), "
              f"warm {median([r['total'] for r in warm]):.1f} s ({len(warm)} runs)")
    print(f"    `mlflow run` start -> pipeline run start {median([r['to_pipeline'] for r in rows]):.1f} s; "
          f"stage processes: {sorted({r['stage_processes'] for r in rows})}")
    print(f"    {'stage':15} {'projects.run':>12} {'direct':>8} {'overhead':>9} {'ratio':>6} {'direct CPU':>10} {'gap before':>10}"
          "  goals: overhead <= 0.5 s, gap <= 0.2 s")
    for stage in STAGES:
        a, b = median([r["via"][stage] for r in rows]), median([r["direct"][stage] for r in rows])
        over = a - b
        cpu = median([r["direct_cpu"][stage] for r in rows])
        gaps = [r["gap"][stage] for r in rows if stage in r["gap"]]
        gap = f"{median(gaps):9.2f}s" if gaps else f"{'':>10}"
        verdict = "OK" if over <= 0.5 and (not gaps or median(gaps) <= 0.2) else "MISSED"
        print(f"    {stage:15} {a:11.1f}s {b:7.1f}s {over:8.1f}s {a / b:6.2f} {cpu:9.1f}s {gap}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", type=Path, help="a checkout of the commit to compare against")
    parser.add_argument("--cold", action="store_true",
                        help="retire this checkout's shared warm process before each pipeline (every run starts cold)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    projects = ([args.baseline.resolve()] if args.baseline else []) + [REPO]
    uri = fresh_store()
    rows: dict[Path, list[dict]] = {p: [] for p in projects}
    for attempt in range(args.repeat):
        for project in projects:
            rows[project].append(measure(project, attempt, uri, cold=args.cold))
            print(f"  run {attempt + 1} {project.name}: {rows[project][-1]['total']:.1f} s"
                  f"{' (shared server warm)' if rows[project][-1]['server_warm'] else ''}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"machine": machine(), "rows": {str(k): v for k, v in rows.items()}}, indent=2))
    print(f"pipeline AAPL mode=both (dj30 2020-2021, epochs 3, rules reviewer) on {machine()}, {args.repeat} run(s) each")
    for project in projects:
        report(f"{project.name} {'(baseline)' if project != REPO else '(this checkout)'}", rows[project])
    if args.baseline:
        base, new = rows[projects[0]], rows[REPO]
        print(f"  this/baseline: wall {median([r['total'] for r in new]) / median([r['total'] for r in base]):.2f}, "
              f"CPU {median([r['total_cpu'] for r in new]) / median([r['total_cpu'] for r in base]):.2f}")
    print(f"  store {uri} (delete when done)")


if __name__ == "__main__":
    main()
