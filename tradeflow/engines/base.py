"""The engine interface: what every engine (builtin SB3, upstream TradeMaster) gives the pipeline.

An engine trains a ``TradingAgent`` on chronological splits and backtests it. An agent maps a
window of feature rows plus the held position to a target position, and saves itself to a
self-contained directory that ``load`` (or ``Engine.load_agent``) restores without the engine's
training state, which is what the MLflow pyfunc wrapper needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from tradeflow.backtest import BacktestResult, simulate
from tradeflow.config import RunConfig
from tradeflow.engines.provenance import Provenance, builtin_provenance
from tradeflow.errors import StepError

if TYPE_CHECKING:
    from tradeflow.features import Splits

#: the column every engine trades at (TradeMaster marks and trades at the close)
PRICE_COLUMN = "close"


class EngineUnavailable(StepError):
    """The engine cannot run here (e.g. its package is not installed); ``str(err)`` is one line."""

    retryable = False  # installing it is an operator's job, not a retry's


@dataclass(frozen=True)
class ActionResult:
    """A decision: ``action`` is the target position in ``-max_volume..max_volume``; ``scores``
    maps each possible target to its Q-value (DQN) or probability (policy-gradient agents)."""

    action: int
    scores: dict[int, float]


@runtime_checkable
class TradingAgent(Protocol):
    """A trained policy, independent of how it was trained."""

    window: int
    max_volume: int
    feature_columns: tuple[str, ...]

    def act(self, features: np.ndarray, position: float = 0.0) -> ActionResult:
        """Greedy decision from ``features`` of shape (window, len(feature_columns)), oldest row
        first, and the held position as a fraction ``target / max_volume`` in -1..1."""
        ...

    def save(self, directory: Path) -> None:
        """Write everything ``load`` needs into ``directory`` (created if missing)."""
        ...

    @classmethod
    def load(cls, directory: Path) -> TradingAgent:
        ...


@dataclass
class TrainResult:
    """The selected agent and how training went.

    ``learning_curve`` has one dict per epoch (``epoch``, ``timesteps``, ``train_total_return``,
    ``valid_total_return``, ``valid_sharpe``, ``steps_per_s`` and ``epsilon`` or ``entropy``);
    ``best_epoch`` (1-based) is the epoch whose checkpoint ``agent`` holds.
    """

    agent: TradingAgent
    learning_curve: list[dict]
    best_epoch: int
    timesteps: int
    train_seconds: float
    env_steps_per_s: float
    extra_metrics: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """Trains and backtests agents; one instance per engine kind, stateless between calls."""

    name: str

    @abstractmethod
    def train(
        self,
        splits: Splits,
        cfg: RunConfig,
        *,
        progress: Callable[[dict], None] | None = None,
        workdir: Path,
    ) -> TrainResult:
        """Train on ``splits.train``, select the checkpoint on ``splits.valid``, report each epoch to ``progress``."""

    @abstractmethod
    def load_agent(self, directory: Path) -> TradingAgent:
        """Restore an agent written by ``TradingAgent.save``."""

    def provenance(self) -> Provenance:
        """Which implementation trains here (``tradeflow.engines.provenance``): recorded with every model."""
        upstream = getattr(self, "upstream", None)
        measured = getattr(upstream, "provenance", None)
        if measured is not None:
            return measured
        if upstream is not None:
            return Provenance("unverified", f"unverified {type(upstream).__name__} (no provenance measured)")
        return builtin_provenance()

    def training_label(self, cfg: RunConfig) -> str:
        """What training does, short (the run name): ``dqn 3 ep``."""
        return f"{cfg.algorithm} {cfg.trademaster.epochs} ep"

    def training_description(self, cfg: RunConfig) -> str:
        """What training does, one sentence (logs, run and version descriptions)."""
        return (f"{cfg.engine}/{cfg.algorithm} agent (stable-baselines3), {cfg.trademaster.epochs} epochs, "
                f"window {cfg.trademaster.backward_num_day} bars")

    def backtest(self, agent: TradingAgent, frame: pd.DataFrame, cfg: RunConfig) -> BacktestResult:
        """Run the agent greedily over ``frame`` and account for it with ``simulate``.

        The first ``window - 1`` rows only fill the first observation; trading (and the
        buy-and-hold benchmark) start at the close of row ``window - 1``. Prepend history rows to
        trade from the frame's first date.
        """
        positions = np.asarray(
            greedy_targets(agent, frame[list(agent.feature_columns)].to_numpy(np.float64)), dtype=np.int64
        )
        start = agent.window - 1
        params = cfg.trademaster
        table = simulate(
            frame[PRICE_COLUMN].to_numpy(np.float64)[start:],
            positions,
            initial_amount=params.initial_amount,
            transaction_cost_pct=params.transaction_cost_pct,
            max_volume=agent.max_volume,
            dates=frame["date"].to_numpy()[start:],
        )
        return BacktestResult.from_table(table)


def greedy_targets(agent: TradingAgent, features: np.ndarray) -> list[int]:
    """The agent's decision at every close from the first full window on, feeding back its held
    position. An agent with its own ``greedy_targets`` (one batched pass) computes it; otherwise
    one ``act`` per close."""
    batched = getattr(agent, "greedy_targets", None)
    if callable(batched):
        return batched(features)
    window = agent.window
    if len(features) < window:
        raise ValueError(f"need at least window={window} rows to act; got {len(features)}")
    targets: list[int] = []
    held = 0
    for end in range(window, len(features) + 1):
        held = agent.act(features[end - window : end], held / agent.max_volume).action
        targets.append(held)
    return targets


def best_epoch_metrics(best: dict) -> dict[str, float]:
    """The selected checkpoint's epoch results, as every engine reports them in ``extra_metrics``."""
    return {f"best_{key}": float(best[key]) for key in ("valid_total_return", "valid_sharpe", "train_total_return")}
