"""What every executor is and returns: the ``Executor`` protocol and its typed ``ExecutionResult``.

Its own module so that each executor (``executors.LocalExecutor``, ``databricks.DatabricksExecutor``)
imports the contract and the registry (``executors.EXECUTORS``) imports the executors, never the
other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tradeflow.orchestration.context import RunContext

@dataclass(frozen=True)
class ExecutionResult:
    """How a symbol's pipeline run ended. ``failure`` is one line when it did not finish;
    ``remote_id`` is the executor's own id of the run (the Databricks run id), if any."""

    run_id: str | None
    status: str
    seconds: float
    failure: str | None = None
    remote_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


class Executor(Protocol):
    """Runs the ``pipeline`` entry point with ``params`` as a child of ``parent``; never raises
    for a run that failed (the result says so), only when it could not tell."""

    kind: str

    def run(self, symbol: str, params: Mapping[str, str], *, parent: Mapping[str, str],
            ctx: RunContext) -> ExecutionResult: ...
