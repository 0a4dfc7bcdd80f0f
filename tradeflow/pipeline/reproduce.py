"""Re-run a past stage run from what MLflow recorded, and say whether its metrics match.

The run is re-executed from a fresh clone at the recorded commit (never touching the user's
working tree), with the recorded entry point and parameters, as a child of the ``reproduce`` run.
Timing metrics are not compared; every other metric must match exactly.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PROJECT_ENTRY_POINT

from tradeflow import settings
from tradeflow.errors import InputError, StepError
from tradeflow.runs.projects import run_entry_point
from tradeflow.runs.records import ReproduceRecord, Tag
from tradeflow.runs.tracking import log_own_params, recorded_params, stage_run
from tradeflow.names import PROJECT_ROOT

REPRODUCIBLE = ("train_backtest", "inference", "review")
VOLATILE_SUFFIXES = ("_seconds", "_per_s", "latency_s")
ARTIFACTS = ReproduceRecord.described()


class NotReproducible(InputError):
    """The run lacks what a reproduction needs (one line, says what)."""


def recorded_invocation(run_id: str, client: MlflowClient | None = None) -> dict:
    """Entry point, MLproject params and commit of a past run, or ``NotReproducible``."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    tags = run.data.tags
    entry_point = tags.get(MLFLOW_PROJECT_ENTRY_POINT)
    commit = tags.get(MLFLOW_GIT_COMMIT)
    if entry_point not in REPRODUCIBLE:
        raise NotReproducible(f"run {run_id} was made by entry point {entry_point!r}; reproducible: {', '.join(REPRODUCIBLE)}")
    if not commit:
        raise NotReproducible(f"run {run_id} has no git commit tag; it was not started by `mlflow run` from a git checkout")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        # a tag is data anyone with write access to the store can set: never let it reach git as an option
        raise NotReproducible(f"run {run_id} records commit {commit[:60]!r}, which is not a full 40-hex commit id")
    declared = _declared_params(entry_point)
    params = {k: v for k, v in recorded_params(run.data.params).items() if k in declared}
    return {"run": run, "entry_point": entry_point, "commit": commit, "params": params,
            "dirty": "+dirty" in tags.get(Tag.CODE_VERSION, "")}


def _declared_params(entry_point: str) -> set[str]:
    from mlflow.projects._project_spec import load_project

    return set(load_project(str(PROJECT_ROOT)).get_entry_point(entry_point).parameters)


def compare_metrics(original: dict[str, float], reproduced: dict[str, float]) -> list[dict]:
    rows = []
    for name in sorted(set(original) | set(reproduced)):
        if name.endswith(VOLATILE_SUFFIXES):
            continue
        a, b = original.get(name), reproduced.get(name)
        same = a is not None and b is not None and (a == b or (math.isnan(a) and math.isnan(b)))
        rows.append({"metric": name, "original": a, "reproduced": b, "match": same})
    return rows


def reproduce(run_id: str, experiment_name: str) -> dict:
    client = MlflowClient()
    invocation = recorded_invocation(run_id, client)
    original = invocation["run"]
    with stage_run("reproduce", experiment_name=experiment_name, tags={Tag.REPRODUCTION_OF: run_id}) as run, \
            tempfile.TemporaryDirectory(prefix="tradeflow-reproduce-") as tmp:
        log_own_params({"run_id": run_id})
        mlflow.log_params({"reproduce.run_id": run_id, "reproduce.entry_point": invocation["entry_point"],
                           "reproduce.commit": invocation["commit"]})
        if invocation["dirty"]:
            mlflow.set_tag(Tag.REPRODUCE_WARNING, "original run was made from uncommitted changes; reproduced at its base commit")
        source = Path(tmp) / "src"
        checkout(invocation["commit"], source)
        os.environ[settings.env_name("reproduction_of")] = run_id  # the re-run must not move registry aliases
        outcome = run_entry_point(invocation["entry_point"], invocation["params"], project_uri=source,
                                  experiment_id=run.info.experiment_id, parent_run_id=run.info.run_id)
        if not outcome.ok:
            raise StepError(f"reproduction of {run_id} failed (run {outcome.run_id}): {outcome.failure}")
        again = client.get_run(outcome.run_id)
        ran_at = again.data.tags.get(MLFLOW_GIT_COMMIT)
        if ran_at != invocation["commit"]:
            raise StepError(f"reproduction of {run_id} ran at commit {ran_at!r}, not the recorded "
                               f"{invocation['commit']}: not a reproduction")
        rows = compare_metrics(original.data.metrics, again.data.metrics)
        same_data = original.data.tags.get(Tag.DATA_DIGEST) == again.data.tags.get(Tag.DATA_DIGEST)
        match = bool(rows) and all(r["match"] for r in rows) and same_data
        mlflow.log_dict({"original_run_id": run_id, "reproduced_run_id": outcome.run_id, "same_data": same_data,
                         "match": match, "metrics": rows}, ReproduceRecord.comparison.path)
        mlflow.set_tags({Tag.REPRODUCE_MATCH: str(match).lower(), Tag.REPRODUCE_RUN_ID: outcome.run_id})
        mlflow.log_metrics({"mismatched_metrics": float(sum(not r["match"] for r in rows)),
                            "compared_metrics": float(len(rows))})
        verdict = "MATCH" if match else "MISMATCH"
        from tradeflow.runs.notes import SEP, run_link, set_name_and_note

        set_name_and_note(run.info.run_id, SEP.join(("reproduce", original.info.run_name or run_id[:8], verdict)),
                          f"## reproduce → **{verdict}**\n\nRe-ran {run_link(original.info.experiment_id, run_id, original.info.run_name)} "
                          f"at commit `{invocation['commit']}` as {run_link(run.info.experiment_id, outcome.run_id)}: "
                          f"{len(rows)} metrics compared, {sum(not r['match'] for r in rows)} differ; same data: {same_data}. "
                          "Details: `comparison.json`.")
        print(f"reproduce {run_id} -> {outcome.run_id}: {verdict} ({len(rows)} metrics compared, "
              f"{sum(not r['match'] for r in rows)} differ; same data: {same_data})", flush=True)
        return {"run_id": run.info.run_id, "reproduced_run_id": outcome.run_id, "match": match, "metrics": rows}


def checkout(commit: str, destination: Path, repo: Path = PROJECT_ROOT) -> None:
    """A clean clone of ``repo`` at ``commit`` (shares objects; the user's tree is untouched)."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise NotReproducible(f"{commit[:60]!r} is not a full 40-hex commit id")
    subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(repo), str(destination)], check=True)
    result = subprocess.run(["git", "-C", str(destination), "checkout", "--quiet", "--detach", commit],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise NotReproducible(f"commit {commit} is not in {repo}: {result.stderr.strip()}")
