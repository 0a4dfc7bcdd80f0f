"""Audits after a load/fault run: every run of the MLflow store (one FINISHED chain of four stage
runs per symbol under each DAG-run parent, nothing RUNNING) and every WebUI artifact (one of each
required type per execution and symbol, every ``run_id`` resolves)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .env import REQUIRED_ARTIFACTS, STAGES


def _entry(run) -> str:
    tags = run.data.tags
    if tags.get("tradeflow.run_level") == "dag_run":
        return "dag_run"
    return tags.get("mlflow.project.entryPoint") or tags.get("tradeflow.stage") or "?"


@dataclass
class Chain:
    """One symbol's FINISHED pipeline run under a DAG-run parent and its four stage runs."""

    symbol: str
    pipeline_run_id: str
    stage_run_ids: dict[str, str]
    stage_status: dict[str, str]
    reused: dict[str, bool]

    @property
    def ok(self) -> bool:
        return set(self.stage_run_ids) == set(STAGES) and all(s == "FINISHED" for s in self.stage_status.values())


@dataclass
class DagRunAudit:
    airflow_run_id: str
    parent_run_id: str | None
    parent_status: str | None
    chains: dict[str, Chain] = field(default_factory=dict)
    symbol_runs: Counter = field(default_factory=Counter)  # (symbol, status) -> count
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class StoreAudit:
    """Every run of every experiment of one tracking store, fetched once."""

    runs: dict[str, Any]

    @classmethod
    def collect(cls, client) -> StoreAudit:
        from mlflow.entities import ViewType

        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs: dict[str, Any] = {}
        token = None
        while experiments:
            page = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            runs.update({run.info.run_id: run for run in page})
            token = page.token
            if not token:
                break
        return cls(runs)

    def by_status(self) -> Counter:
        """``(entry point, status) -> count`` over the whole store."""
        return Counter((_entry(run), run.info.status) for run in self.runs.values())

    def running(self) -> list[str]:
        """Every run still RUNNING (or SCHEDULED): ``entry symbol run_id parent=...``."""
        return [f"{_entry(run)} {run.data.tags.get('tradeflow.symbol', '-')} {run.info.run_id} "
                f"parent={run.data.tags.get('mlflow.parentRunId', '-')}"
                for run in self.runs.values() if run.info.status in ("RUNNING", "SCHEDULED")]

    def children(self, parent_run_id: str) -> list[Any]:
        return [run for run in self.runs.values() if run.data.tags.get("mlflow.parentRunId") == parent_run_id]

    def stage_runs(self, stage: str, symbol: str | None = None, status: str | None = None) -> list[Any]:
        return [run for run in self.runs.values()
                if _entry(run) == stage and (symbol is None or run.data.tags.get("tradeflow.symbol") == symbol)
                and (status is None or run.info.status == status)]

    def dag_run(self, airflow_run_id: str, symbols: Sequence[str]) -> DagRunAudit:
        """Under the DAG-run parent: exactly one FINISHED symbol run per symbol whose four stage
        run ids (reused or not) are FINISHED runs of the right entry point and symbol."""
        parents = [run for run in self.runs.values() if _entry(run) == "dag_run"
                   and run.data.tags.get("tradeflow.airflow_run_id") == airflow_run_id]
        if len(parents) != 1:
            return DagRunAudit(airflow_run_id, None, None,
                               problems=[f"{len(parents)} DAG-run parent runs for {airflow_run_id} (expected 1)"])
        parent = parents[0]
        audit = DagRunAudit(airflow_run_id, parent.info.run_id, parent.info.status)
        if parent.info.status != "FINISHED":
            audit.problems.append(f"DAG-run parent {parent.info.run_id} is {parent.info.status}")
        children = self.children(parent.info.run_id)
        for child in children:
            symbol = child.data.tags.get("tradeflow.symbol") or child.data.params.get("symbol", "?")
            audit.symbol_runs[(symbol.upper(), child.info.status)] += 1
        for symbol in symbols:
            finished = [c for c in children if (c.data.tags.get("tradeflow.symbol") or "").upper() == symbol
                        and c.info.status == "FINISHED"]
            if len(finished) != 1:
                audit.problems.append(f"{symbol}: {len(finished)} FINISHED symbol runs under the parent (expected 1)")
                continue
            run = finished[0]
            chain = Chain(symbol, run.info.run_id, {}, {}, {})
            for stage in STAGES:
                stage_id = run.data.tags.get(f"tradeflow.stage.{stage}.run_id")
                if not stage_id:
                    audit.problems.append(f"{symbol}: no {stage} run id on pipeline run {run.info.run_id}")
                    continue
                stage_run = self.runs.get(stage_id)
                chain.stage_run_ids[stage] = stage_id
                chain.reused[stage] = run.data.tags.get(f"tradeflow.stage.{stage}.reused") == "true"
                chain.stage_status[stage] = stage_run.info.status if stage_run else "MISSING"
                if stage_run is None:
                    audit.problems.append(f"{symbol}: {stage} run {stage_id} does not exist")
                elif stage_run.info.status != "FINISHED" or _entry(stage_run) != stage \
                        or stage_run.data.tags.get("tradeflow.symbol", symbol) != symbol:
                    audit.problems.append(f"{symbol}: {stage} run {stage_id} is {_entry(stage_run)}/"
                                          f"{stage_run.info.status}/{stage_run.data.tags.get('tradeflow.symbol')}")
            audit.chains[symbol] = chain
        return audit


@dataclass
class ArtifactAudit:
    counts: Counter  # (execution_id, symbol, type) -> count
    total: int
    unresolved: list[str]  # artifacts whose run_id is not an MLflow run

    @classmethod
    def collect(cls, artifacts: Sequence[Mapping[str, Any]], client) -> ArtifactAudit:
        counts: Counter = Counter()
        unresolved = []
        checked: dict[str, bool] = {}
        for artifact in artifacts:
            counts[(artifact.get("execution_id"), artifact.get("symbol"), artifact.get("type"))] += 1
            run_id = artifact.get("run_id") or ""
            if run_id not in checked:
                try:
                    client.get_run(run_id)
                    checked[run_id] = True
                except Exception:
                    checked[run_id] = False
            if not checked[run_id]:
                unresolved.append(f"#{artifact.get('id')} {artifact.get('type')} {artifact.get('symbol')} "
                                  f"run_id={run_id!r}")
        return cls(counts, len(artifacts), unresolved)

    def problems(self, execution_ids: Iterable[str], symbols: Iterable[str],
                 types: Sequence[str] = REQUIRED_ARTIFACTS) -> list[str]:
        """Exactly one artifact of each type per (execution, symbol); every run id resolves."""
        out = [f"unresolved run_id: {u}" for u in self.unresolved]
        for execution_id in execution_ids:
            for symbol in symbols:
                for kind in types:
                    n = self.counts[(execution_id, symbol, kind)]
                    if n != 1:
                        out.append(f"{execution_id} {symbol}: {n} {kind} artifacts (expected 1)")
        return out

    def per_type(self, execution_ids: Iterable[str] | None = None) -> Counter:
        wanted = None if execution_ids is None else set(execution_ids)
        out: Counter = Counter()
        for (execution_id, _symbol, kind), n in self.counts.items():
            if wanted is None or execution_id in wanted:
                out[kind] += n
        return out
