"""Per-epoch evaluation of a builtin agent in training: at each epoch boundary a greedy backtest on
train and valid, the best-on-valid weights kept (as TradeMaster's trainer selects its checkpoint).
Shared by ``DQNLoop`` and SB3's ``learn`` (through ``EpochCallback``)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from tradeflow.config import RunConfig
from tradeflow.engines.base import Engine, TradingAgent

if TYPE_CHECKING:
    from tradeflow.features import Splits


class PolicyAgent(TradingAgent, Protocol):
    """What the evaluator needs of the agent in training: a ``TradingAgent`` with its SB3 model
    (``agent.BuiltinAgent``; a protocol, so this module never imports the agent that uses it)."""

    model: BaseAlgorithm

log = logging.getLogger("tradeflow.engines.builtin.agent")


class EpochEvaluator:
    """At every epoch boundary: backtest greedily on train and valid, keep the best-on-valid
    weights, report the epoch; stop training after the last one. Evaluation time is excluded from
    the measured env steps/s."""

    def __init__(
        self,
        engine: Engine,
        agent: PolicyAgent,
        splits: Splits,
        cfg: RunConfig,
        progress: Callable[[dict], None] | None,
    ) -> None:
        self.engine, self.agent, self.splits, self.cfg, self.progress = engine, agent, splits, cfg, progress
        self.steps_per_epoch = len(splits.train)
        self.curve: list[dict] = []
        self.best: dict[str, Any] = {}
        self.best_state: dict[str, torch.Tensor] = {}
        self.learning_seconds = 0.0
        self._mark = 0.0

    def start(self) -> None:
        self._mark = time.perf_counter()

    def after_step(self, num_timesteps: int) -> bool:
        """Called after every env step; False once the last epoch is done."""
        if num_timesteps % self.steps_per_epoch:
            return True
        model = self.agent.model
        seconds = time.perf_counter() - self._mark
        self.learning_seconds += seconds
        epoch, epochs = num_timesteps // self.steps_per_epoch, self.cfg.trademaster.epochs
        train = self.engine.backtest(self.agent, self.splits.train, self.cfg).metrics
        valid = self.engine.backtest(self.agent, self.splits.valid, self.cfg).metrics
        row: dict[str, Any] = {
            "epoch": epoch,
            "timesteps": num_timesteps,
            "train_total_return": train["total_return"],
            "valid_total_return": valid["total_return"],
            "valid_sharpe": valid["sharpe"],
            "steps_per_s": self.steps_per_epoch / seconds,
        }
        if isinstance(model, DQN):
            row["epsilon"] = model.exploration_rate
        elif (entropy_loss := model.logger.name_to_value.get("train/entropy_loss")) is not None:
            row["entropy"] = -float(entropy_loss)
        self.curve.append(row)
        if not self.best or row["valid_total_return"] > self.best["valid_total_return"]:
            self.best = row
            self.best_state = copy.deepcopy(model.policy.state_dict())
        log.info(
            "epoch %d/%d  timesteps %d  valid_return %+.1f%%  %.0f steps/s",
            epoch, epochs, num_timesteps, 100 * row["valid_total_return"], row["steps_per_s"],
        )
        if self.progress is not None:
            self.progress(dict(row))
        self._mark = time.perf_counter()
        return epoch < epochs


class EpochCallback(BaseCallback):
    """``EpochEvaluator`` inside SB3's ``learn`` (PPO, A2C)."""

    def __init__(self, evaluator: EpochEvaluator) -> None:
        super().__init__()
        self.evaluator = evaluator

    def _on_training_start(self) -> None:
        self.evaluator.start()

    def _on_step(self) -> bool:
        return self.evaluator.after_step(self.num_timesteps)
