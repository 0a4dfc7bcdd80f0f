"""The builtin engine: stable-baselines3 agents trained on ``TradingEnv``, best epoch chosen on validation.

Training budget is ``epochs * len(train split)`` environment steps. At every epoch boundary the
current policy is backtested greedily on the train and valid splits (the same ``Engine.backtest``
the pipeline uses), and the checkpoint with the best valid total return is the one returned, as
TradeMaster's trainer does.

The SB3 hyperparameters are the config's ``sb3`` section (``tradeflow.config.SB3Params``, logged as
``cfg.sb3.*``). Its DQN defaults are sized for a few hundred daily bars, where SB3's Atari-scale
defaults would barely start learning: the replay buffer holds the whole run, learning starts after a
tenth of an epoch, one gradient step every 4 env steps, a hard target update ten times per epoch, and
gamma 0.9 (TradeMaster's value; the reward already looks ahead through its forward-return shaping).

DQN on the CPU is trained by ``dqn_loop.DQNLoop``: SB3's DQN algorithm (same schedule, loss, clipping,
target updates, on the SB3 model's own networks and optimizer state) without SB3's per-step
machinery, which at one gradient step per env step was ~3/4 of the time. The trained model is the
SB3 ``DQN`` object, saved and loaded as before. PPO, A2C and DQN on a GPU use SB3's ``learn``.
Backtests evaluate the policy for all windows in one batched pass (``BuiltinAgent.greedy_targets``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import set_random_seed

from tradeflow.config import RunConfig, SB3Params, TradeMasterParams
from tradeflow.engines.base import PRICE_COLUMN, ActionResult, Engine, TrainResult, best_epoch_metrics
from tradeflow.engines.builtin.dqn_loop import DQNLoop
from tradeflow.engines.builtin.epochs import EpochCallback, EpochEvaluator
from tradeflow.engines.builtin.env import ObservationScaler, TradingEnv, make_observation
from tradeflow.features import FEATURE_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from tradeflow.features import Splits

log = logging.getLogger(__name__)

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"dqn": DQN, "ppo": PPO, "a2c": A2C}
MODEL_FILE = "model.zip"
META_FILE = "agent.json"
#: the default DQN env steps per gradient step (the config's ``sb3.dqn_train_freq``; bench_trademaster reads it)
TRAIN_FREQ: int = SB3Params.model_fields["dqn_train_freq"].default
#: observations per forward pass of a batched greedy backtest, in floats (16 MiB)
GREEDY_BATCH_FLOATS = 1 << 22


class BuiltinAgent:
    """An SB3 policy plus what it needs to turn raw feature rows into its observation."""

    def __init__(
        self,
        model: BaseAlgorithm,
        *,
        algorithm: str,
        window: int,
        max_volume: int,
        feature_columns: tuple[str, ...],
        scaler: ObservationScaler,
    ) -> None:
        self.model = model
        self.algorithm = algorithm
        self.window = window
        self.max_volume = max_volume
        self.feature_columns = tuple(feature_columns)
        self.scaler = scaler

    def act(self, features: np.ndarray, position: float = 0.0) -> ActionResult:
        """Greedy target: argmax of Q-values (DQN) or of action probabilities (PPO, A2C)."""
        expected = (self.window, len(self.feature_columns))
        if features.shape != expected:
            raise ValueError(f"features must have shape {expected} (window, features); got {features.shape}")
        values = self._values(make_observation(self.scaler.transform(features), position)[None])[0]
        return ActionResult(
            action=int(np.argmax(values)) - self.max_volume,
            scores={index - self.max_volume: float(value) for index, value in enumerate(values)},
        )

    def greedy_targets(self, features: np.ndarray) -> list[int]:
        """``act(...).action`` at every close from the first full window on, feeding back the held
        position (what ``Engine.backtest`` walks), in one forward pass: the policy is evaluated for
        every window at every position it could hold (``2 * max_volume + 1`` of them), then the path
        is read off that table. Per-row ``act`` calls made each epoch's backtests cost as much as
        training at the default config."""
        window, n_features = self.window, len(self.feature_columns)
        if features.ndim != 2 or features.shape[1] != n_features:
            raise ValueError(f"features must have shape (rows, {n_features}); got {features.shape}")
        if len(features) < window:
            raise ValueError(f"need at least window={window} rows to act; got {len(features)}")
        scaled = self.scaler.transform(features)
        windows = np.lib.stride_tricks.sliding_window_view(scaled, window, axis=0)  # (m, features, window)
        windows = windows.transpose(0, 2, 1).reshape(len(windows), window * n_features)
        held = np.arange(-self.max_volume, self.max_volume + 1)
        chunk = max(1, GREEDY_BATCH_FLOATS // (len(held) * (windows.shape[1] + 1)))  # rows per forward pass
        best: list[list[int]] = []  # best[row][held + max_volume]
        for lo in range(0, len(windows), chunk):
            part = windows[lo : lo + chunk]
            obs = np.empty((len(part), len(held), part.shape[1] + 1), dtype=np.float32)
            obs[:, :, :-1] = part[:, None, :]
            obs[:, :, -1] = held / self.max_volume
            values = self._values(obs.reshape(-1, obs.shape[-1])).reshape(len(part), len(held), -1)
            best.extend((values.argmax(axis=2) - self.max_volume).tolist())
        targets: list[int] = []
        position = 0
        for row in best:
            position = row[position + self.max_volume]
            targets.append(position)
        return targets

    def _values(self, obs: np.ndarray) -> np.ndarray:
        """Q-values (DQN) or action probabilities (PPO, A2C) for a batch of observations."""
        with torch.no_grad():
            tensor = torch.as_tensor(obs, device=self.model.device)
            if isinstance(self.model, DQN):
                values = self.model.q_net(tensor)
            else:
                values = self.model.policy.get_distribution(tensor).distribution.probs
        return values.cpu().numpy()

    def save(self, directory: Path) -> None:
        """``model.zip`` (SB3, no replay buffer) and ``agent.json`` (window, sizing, features, scaler)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_FILE)
        meta = {
            "engine": "builtin",
            "algorithm": self.algorithm,
            "window": self.window,
            "max_volume": self.max_volume,
            "feature_columns": list(self.feature_columns),
            "scaler": self.scaler.to_dict(),
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> BuiltinAgent:
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        model = ALGORITHMS[meta["algorithm"]].load(directory / MODEL_FILE, device=device)
        return cls(
            model,
            algorithm=meta["algorithm"],
            window=int(meta["window"]),
            max_volume=int(meta["max_volume"]),
            feature_columns=tuple(meta["feature_columns"]),
            scaler=ObservationScaler.from_dict(meta["scaler"]),
        )


def make_env(
    frame: pd.DataFrame, scaler: ObservationScaler, params: TradeMasterParams, *, shaping: bool
) -> TradingEnv:
    """A ``TradingEnv`` over one split; ``shaping`` adds the forward-return reward (training only)."""
    return TradingEnv(
        scaler.transform(frame[list(FEATURE_COLUMNS)].to_numpy(np.float64)),
        frame[PRICE_COLUMN].to_numpy(np.float64),
        window=params.backward_num_day,
        max_volume=params.max_volume,
        initial_amount=params.initial_amount,
        transaction_cost_pct=params.transaction_cost_pct,
        forward_num_day=params.forward_num_day,
        future_weights=params.future_weights if shaping else 0.0,
    )


def dqn_learning_starts(steps_per_epoch: int, sb3: SB3Params | None = None) -> int:
    """Env steps of uniform random actions before DQN's first gradient update: ``sb3.dqn_learning_starts``,
    or by default a tenth of an epoch (at least one batch's worth)."""
    if sb3 is not None and sb3.dqn_learning_starts is not None:
        return sb3.dqn_learning_starts
    return max(64, steps_per_epoch // 10)


def dqn_target_update_interval(steps_per_epoch: int, sb3: SB3Params) -> int:
    """Env steps between hard target updates: ``sb3.dqn_target_update_interval``, or ten per epoch."""
    if sb3.dqn_target_update_interval is not None:
        return sb3.dqn_target_update_interval
    return max(1, steps_per_epoch // 10)


def build_model(
    algorithm: str,
    env: TradingEnv,
    params: TradeMasterParams,
    *,
    seed: int,
    steps_per_epoch: int,
    sb3: SB3Params = SB3Params(),
    train_freq: int | None = None,
) -> BaseAlgorithm:
    """The SB3 algorithm with the ``sb3`` hyperparameters (``train_freq``, if given, overrides
    ``sb3.dqn_train_freq``: the benchmark's equal-work run)."""
    common: dict[str, Any] = {
        "learning_rate": params.learning_rate,
        "gamma": sb3.gamma,
        "policy_kwargs": {"net_arch": list(params.hidden_dims)},
        "seed": seed,
        "device": params.device,
        "verbose": 0,
    }
    if algorithm == "dqn":
        return DQN(
            "MlpPolicy",
            env,
            buffer_size=min(params.epochs * steps_per_epoch, sb3.dqn_buffer_size),
            learning_starts=dqn_learning_starts(steps_per_epoch, sb3),
            batch_size=sb3.dqn_batch_size,
            train_freq=sb3.dqn_train_freq if train_freq is None else train_freq,
            gradient_steps=sb3.dqn_gradient_steps,
            target_update_interval=dqn_target_update_interval(steps_per_epoch, sb3),
            exploration_fraction=params.explore_rate,
            **common,
        )
    if algorithm == "ppo":
        n_steps = min(sb3.ppo_n_steps, steps_per_epoch)
        return PPO("MlpPolicy", env, n_steps=n_steps, batch_size=sb3.ppo_batch_size, ent_coef=sb3.ent_coef, **common)
    if algorithm == "a2c":
        return A2C("MlpPolicy", env, ent_coef=sb3.ent_coef, **common)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)}")


@contextmanager
def reproducible_torch(threads: int = 1) -> Iterator[None]:
    """Deterministic kernels on few threads (small MLPs gain nothing from more); restored afterwards."""
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.set_num_threads(threads)
    _deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        _deterministic_algorithms(previous[1], warn_only=previous[2])


def _skip_dynamo_disable_wrappers() -> None:
    """Keep ``torch.optim.Optimizer`` from importing torch._dynamo (~3 s a process, the "first
    training" set-up cost) on its first ``add_param_group``/``state_dict``/``load_state_dict``/
    ``zero_grad`` call, which every SB3 model construction and load makes.

    torch wraps those methods in ``torch._disable_dynamo``, which imports dynamo lazily on the
    first call only to wrap the method in ``torch._dynamo.disable``: a context that matters only
    while ``torch.compile`` traces the caller, and nothing in this process compiles. The wrapper
    caches the disabled function on the method as ``__dynamo_disable``; we pre-fill that cache with
    the method itself. Applied only while dynamo is not loaded (if something has imported it, the
    wrappers do their real work), and only where the wrapper has the shape torch 2.13 gives it."""
    import sys

    if "torch._dynamo" in sys.modules:
        return
    for name in ("add_param_group", "state_dict", "load_state_dict", "zero_grad"):
        method = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if callable(method) and getattr(method, "__dynamo_disable", None) is None:
            setattr(method, "__dynamo_disable", method)


_skip_dynamo_disable_wrappers()


def _deterministic_algorithms(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without its ``import torch._inductor.config``, which
    imports torch._dynamo (2-3 s a process; 8 s on a loaded machine): the flag is the same, and
    inductor's copy of it only matters to ``torch.compile``, which we never use. Once inductor is
    loaded anyway, the public call is cheap and keeps both in step."""
    import sys

    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


class BuiltinEngine(Engine):
    """stable-baselines3 DQN / PPO / A2C on ``TradingEnv``."""

    name = "builtin"

    def __init__(self, *, train_freq: int | None = None) -> None:
        """``train_freq``: DQN env steps per gradient step, overriding the config's ``sb3.dqn_train_freq``
        (1 for upstream TradeMaster's work per step, as bench_trademaster's equal-work run does)."""
        if train_freq is not None and train_freq < 1:
            raise ValueError(f"train_freq must be >= 1; got {train_freq}")
        self.train_freq = train_freq

    def train(
        self,
        splits: Splits,
        cfg: RunConfig,
        *,
        progress: Callable[[dict], None] | None = None,
        workdir: Path,
    ) -> TrainResult:
        """Train, then return the best-on-valid checkpoint (everything stays in memory: ``workdir``
        is unused; the caller saves ``result.agent``)."""
        started = time.perf_counter()
        params = cfg.trademaster
        scaler = ObservationScaler.fit(splits.train[list(FEATURE_COLUMNS)].to_numpy(np.float64))
        with reproducible_torch():
            set_random_seed(cfg.seed)
            env = make_env(splits.train, scaler, params, shaping=True)
            model = build_model(
                cfg.algorithm, env, params, seed=cfg.seed, steps_per_epoch=len(splits.train), sb3=cfg.sb3,
                train_freq=self.train_freq,
            )
            agent = BuiltinAgent(
                model,
                algorithm=cfg.algorithm,
                window=params.backward_num_day,
                max_volume=params.max_volume,
                feature_columns=FEATURE_COLUMNS,
                scaler=scaler,
            )
            evaluator = EpochEvaluator(self, agent, splits, cfg, progress)
            total = params.epochs * len(splits.train)
            if isinstance(model, DQN) and model.device.type == "cpu":
                DQNLoop(model, env, cfg.seed).learn(total, evaluator)
            else:
                model.learn(total_timesteps=total, callback=EpochCallback(evaluator))
            model.policy.load_state_dict(evaluator.best_state)
        best = evaluator.best
        return TrainResult(
            agent=agent,
            learning_curve=evaluator.curve,
            best_epoch=int(best["epoch"]),
            timesteps=model.num_timesteps,
            train_seconds=time.perf_counter() - started,
            env_steps_per_s=model.num_timesteps / evaluator.learning_seconds,
            extra_metrics=best_epoch_metrics(best),
        )

    def load_agent(self, directory: Path) -> BuiltinAgent:
        return BuiltinAgent.load(directory)
