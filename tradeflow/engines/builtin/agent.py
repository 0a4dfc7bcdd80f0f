"""The builtin engine: stable-baselines3 agents trained on ``TradingEnv``, best epoch chosen on validation.

Training budget is ``epochs * len(train split)`` environment steps. At every epoch boundary the
current policy is backtested greedily on the train and valid splits (the same ``Engine.backtest``
the pipeline uses), and the checkpoint with the best valid total return is the one returned, as
TradeMaster's trainer does.

DQN defaults are sized for a few hundred daily bars, where SB3's Atari-scale defaults would
barely start learning: the replay buffer holds the whole run, learning starts after a tenth of an
epoch, one gradient step every 4 env steps, a hard target update ten times per epoch, and gamma 0.9
(TradeMaster's value; the reward already looks ahead through its forward-return shaping).

DQN on the CPU is trained by ``_DQNLoop``: SB3's DQN algorithm (same schedule, loss, clipping,
target updates, on the SB3 model's own networks and optimizer state) without SB3's per-step
machinery, which at one gradient step per env step was ~3/4 of the time. The trained model is the
SB3 ``DQN`` object, saved and loaded as before. PPO, A2C and DQN on a GPU use SB3's ``learn``.
Backtests evaluate the policy for all windows in one batched pass (``BuiltinAgent.greedy_targets``).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import set_random_seed

from tradeflow.config import RunConfig, TradeMasterParams
from tradeflow.engines.base import PRICE_COLUMN, ActionResult, Engine, TrainResult, best_epoch_metrics
from tradeflow.engines.builtin.env import ObservationScaler, TradingEnv, make_observation
from tradeflow.features import FEATURE_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from tradeflow.features import Splits

log = logging.getLogger(__name__)

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"dqn": DQN, "ppo": PPO, "a2c": A2C}
MODEL_FILE = "model.zip"
META_FILE = "agent.json"
GAMMA = 0.9
MAX_REPLAY = 100_000
#: DQN env steps per gradient step (1 = upstream TradeMaster's work per step; bench_trademaster's equal-work run)
TRAIN_FREQ = 4
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


def dqn_learning_starts(steps_per_epoch: int) -> int:
    """Env steps of uniform random actions before DQN's first gradient update: a tenth of an epoch."""
    return max(64, steps_per_epoch // 10)


def build_model(
    algorithm: str,
    env: TradingEnv,
    params: TradeMasterParams,
    *,
    seed: int,
    steps_per_epoch: int,
    train_freq: int = TRAIN_FREQ,
) -> BaseAlgorithm:
    """The SB3 algorithm with hyperparameters sized for short daily series (``train_freq``: DQN
    env steps per gradient step)."""
    common: dict[str, Any] = {
        "learning_rate": params.learning_rate,
        "gamma": GAMMA,
        "policy_kwargs": {"net_arch": list(params.hidden_dims)},
        "seed": seed,
        "device": params.device,
        "verbose": 0,
    }
    if algorithm == "dqn":
        return DQN(
            "MlpPolicy",
            env,
            buffer_size=min(params.epochs * steps_per_epoch, MAX_REPLAY),
            learning_starts=dqn_learning_starts(steps_per_epoch),
            batch_size=64,
            train_freq=train_freq,
            gradient_steps=1,
            target_update_interval=max(1, steps_per_epoch // 10),
            exploration_fraction=params.explore_rate,
            **common,
        )
    if algorithm == "ppo":
        return PPO("MlpPolicy", env, n_steps=min(128, steps_per_epoch), batch_size=64, ent_coef=0.01, **common)
    if algorithm == "a2c":
        return A2C("MlpPolicy", env, ent_coef=0.01, **common)
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


class _EpochEvaluator:
    """At every epoch boundary: backtest greedily on train and valid, keep the best-on-valid
    weights, report the epoch; stop training after the last one. Evaluation time is excluded from
    the measured env steps/s."""

    def __init__(
        self,
        engine: Engine,
        agent: BuiltinAgent,
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


class _EpochCallback(BaseCallback):
    """``_EpochEvaluator`` inside SB3's ``learn`` (PPO, A2C)."""

    def __init__(self, evaluator: _EpochEvaluator) -> None:
        super().__init__()
        self.evaluator = evaluator

    def _on_training_start(self) -> None:
        self.evaluator.start()

    def _on_step(self) -> bool:
        return self.evaluator.after_step(self.num_timesteps)


class _DQNLoop:
    """SB3's DQN (``DQN.learn`` with one env) as one tight loop over the model's own networks,
    optimizer state and hyperparameters.

    Same algorithm, step for step: uniform random actions until ``learning_starts``, then
    epsilon-greedy with SB3's linear epsilon schedule; after every ``train_freq`` env steps past
    ``learning_starts``, ``gradient_steps`` updates on uniform replay batches (Huber loss against
    ``r + gamma * (1 - done) * max_a Q_target(s', a)``, gradient norm clipped to ``max_grad_norm``,
    Adam with the policy optimizer's settings and state); the target network copied every
    ``target_update_interval`` env steps (``tau`` 1); the epoch callback runs after each env step,
    before that step's update, as in ``collect_rollouts``.

    What is gone is per-step overhead, which at one update per env step was ~3/4 of the time (the
    net is tiny: a batch's matrix products take ~0.2 ms): the VecEnv and Monitor wrappers, the
    logger, ``policy.predict``'s checks, numpy batches copied into new tensors (transitions live
    in preallocated tensors, batches are ``index_select``-ed out), autograd (the MLP's gradients
    are written out by hand into preallocated tensors: ``_update_batch``, checked against autograd
    in tests/test_engine_builtin.py), ``clip_grad_norm_``'s and ``Optimizer.step``'s Python
    (``torch._foreach_norm`` and the fused Adam kernel ``Adam(fused=True)`` runs, on the
    optimizer's own state). Random draws come from generators seeded with the run's seed (numpy
    for exploration, torch for batches), so a run is reproducible, but not draw-for-draw
    identical to SB3's ``learn``.
    """

    def __init__(self, model: DQN, env: TradingEnv, seed: int) -> None:
        if model.n_envs != 1 or model.tau != 1.0 or model.replay_buffer_class not in (None, ReplayBuffer):
            raise ValueError("_DQNLoop runs one env, hard target updates and a plain replay buffer")
        optimizer = model.policy.optimizer
        group = optimizer.param_groups[0]
        if (type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1 or group["amsgrad"]
                or group["maximize"] or group["weight_decay"] or group.get("decoupled_weight_decay")):
            raise ValueError(f"_DQNLoop needs the policy's plain Adam optimizer; got {optimizer}")
        self.model, self.env = model, env
        self.layers = _linear_stack(model.q_net)
        self.target_layers = _linear_stack(model.q_net_target)
        self.params = [tensor for layer in self.layers for tensor in layer]
        self.grads = [torch.zeros_like(tensor) for tensor in self.params]
        self.adam = _AdamState(optimizer, self.params)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.obs_dim = obs_dim = int(np.prod(env.observation_space.shape))
        capacity = model.buffer_size
        # one row per transition: observation and next observation side by side; action; reward and
        # the discount gamma * (1 - done) applied to the next state's value
        self.observations = torch.zeros((capacity, 2 * obs_dim), dtype=torch.float32)
        self.actions = torch.zeros((capacity, 1), dtype=torch.int64)
        self.outcomes = torch.zeros((capacity, 2), dtype=torch.float32)
        self._observations, self._actions, self._outcomes = (
            t.numpy() for t in (self.observations, self.actions, self.outcomes)
        )
        self.size = self.pos = 0

    def learn(self, total_timesteps: int, evaluator: _EpochEvaluator) -> None:
        with torch.no_grad():
            self._learn(total_timesteps, evaluator)

    def _learn(self, total_timesteps: int, evaluator: _EpochEvaluator) -> None:
        model, env, rng = self.model, self.env, self.rng
        n_actions = int(env.action_space.n)
        learning_starts, train_freq = model.learning_starts, model.train_freq.frequency
        gradient_steps = model.gradient_steps if model.gradient_steps > 0 else train_freq
        target_every = max(model.target_update_interval, 1)
        schedule = model.exploration_schedule
        target_params = [tensor for layer in self.target_layers for tensor in layer]
        model.num_timesteps = model._n_calls = 0
        model._total_timesteps = total_timesteps
        model.exploration_rate = schedule(1.0)
        obs, _ = env.reset()
        evaluator.start()
        step = 0
        while step < total_timesteps:
            if step < learning_starts or rng.random() < model.exploration_rate:
                action = int(rng.integers(n_actions))
            else:
                action = int(_mlp(torch.from_numpy(obs), self.layers).argmax())
            next_obs, reward, terminated, truncated, _ = env.step(action)
            step += 1
            model.num_timesteps = step
            if not evaluator.after_step(step):
                break
            self._add(obs, next_obs, action, reward, terminated)
            obs = env.reset()[0] if terminated or truncated else next_obs
            model._n_calls = step
            if step % target_every == 0:
                torch._foreach_copy_(target_params, self.params)
            model._current_progress_remaining = 1.0 - step / total_timesteps
            model.exploration_rate = schedule(model._current_progress_remaining)
            if step % train_freq == 0 and step > learning_starts:
                for _ in range(gradient_steps):
                    self._update()
                model._n_updates += gradient_steps

    def _add(self, obs: np.ndarray, next_obs: np.ndarray, action: int, reward: float, done: bool) -> None:
        row, dim = self.pos, self.obs_dim
        self._observations[row, :dim] = obs
        self._observations[row, dim:] = next_obs
        self._actions[row, 0] = action
        self._outcomes[row] = (reward, 0.0 if done else self.model.gamma)
        self.pos = (row + 1) % len(self._actions)
        self.size = min(self.size + 1, len(self._actions))

    def _update(self) -> None:
        """One gradient step on a uniform batch of stored transitions."""
        index = torch.randint(self.size, (self.model.batch_size,), generator=self.generator)
        pairs = self.observations.index_select(0, index)
        outcomes = self.outcomes.index_select(0, index)
        self._update_batch(
            pairs[:, : self.obs_dim], pairs[:, self.obs_dim :], self.actions.index_select(0, index),
            outcomes[:, 0], outcomes[:, 1],
        )

    def _update_batch(
        self,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        discounts: torch.Tensor,
    ) -> None:
        """SB3's ``DQN.train`` step on one batch (``actions`` (batch, 1) int64, ``discounts`` =
        gamma * (1 - done)), with the gradient of the mean Huber loss written out by hand: for a
        ReLU MLP ``h_{i+1} = relu(h_i W_i^T + b_i)``, back from ``dL/dq`` the layer gradients are
        ``delta^T h_i`` and ``sum(delta)``, and ``delta`` passes back as ``delta W_i`` where ``h_i > 0``."""
        next_q = _mlp(next_obs, self.target_layers).amax(dim=1)
        target_q = torch.addcmul(rewards, discounts, next_q)
        hidden = [obs]
        for weight, bias in self.layers[:-1]:
            hidden.append(torch.relu_(torch.addmm(bias, hidden[-1], weight.t())))
        weight, bias = self.layers[-1]
        q_values = torch.addmm(bias, hidden[-1], weight.t())
        # d(mean smooth_l1, beta 1)/dq at the taken action: clamp(q - target, -1, 1) / batch
        error = (q_values.gather(1, actions).squeeze(1) - target_q).clamp_(-1.0, 1.0).div_(len(actions))
        delta = torch.zeros_like(q_values).scatter_(1, actions, error.unsqueeze(1))
        for layer in range(len(self.layers) - 1, -1, -1):
            weight = self.layers[layer][0]
            torch.mm(delta.t(), hidden[layer], out=self.grads[2 * layer])
            torch.sum(delta, 0, out=self.grads[2 * layer + 1])
            if layer:
                delta = torch.ops.aten.threshold_backward(torch.mm(delta, weight), hidden[layer], 0.0)
        # clip_grad_norm_(max_grad_norm): total 2-norm over all gradients, scaled down if above
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.grads)))
        torch._foreach_mul_(self.grads, (self.model.max_grad_norm / (total + 1e-6)).clamp_(max=1.0))
        self.adam.step(self.grads)


class _AdamState:
    """``Adam(fused=True).step()`` on an existing ``torch.optim.Adam``'s parameters and state
    (``step``, ``exp_avg``, ``exp_avg_sq``, created as Adam creates them), without the optimizer's
    per-call Python; the optimizer's ``state_dict`` stays what its own steps would leave."""

    def __init__(self, optimizer: torch.optim.Adam, params: list[torch.Tensor]) -> None:
        group = optimizer.param_groups[0]
        if {id(p) for p in group["params"]} != {id(p) for p in params}:
            raise ValueError("the optimizer does not hold exactly the Q-network's parameters")
        for param in params:
            state = optimizer.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.params = params
        self.steps = [optimizer.state[p]["step"] for p in params]
        self.exp_avgs = [optimizer.state[p]["exp_avg"] for p in params]
        self.exp_avg_sqs = [optimizer.state[p]["exp_avg_sq"] for p in params]
        self.options = {"lr": float(group["lr"]), "beta1": float(group["betas"][0]), "beta2": float(group["betas"][1]),
                        "eps": float(group["eps"]), "weight_decay": 0.0, "amsgrad": False, "maximize": False}

    def step(self, grads: list[torch.Tensor]) -> None:
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps,
                           grad_scale=None, found_inf=None, **self.options)


def _linear_stack(q_network: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each layer of SB3's ``QNetwork`` MLP (flatten, then Linear/ReLU pairs, a
    final Linear), in order; anything else is refused rather than run differently."""
    layers = list(q_network.q_net)
    linear = layers[0::2]
    if (
        not isinstance(q_network.features_extractor.flatten, torch.nn.Flatten)
        or len(layers) % 2 == 0
        or not all(isinstance(layer, torch.nn.Linear) and layer.bias is not None for layer in linear)
        or not all(isinstance(layer, torch.nn.ReLU) for layer in layers[1::2])
    ):
        raise ValueError(f"_DQNLoop needs a Linear/ReLU MLP Q-network; got {q_network}")
    return [(layer.weight, layer.bias) for layer in linear]


def _mlp(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The Q-network's forward pass on its own parameters (what ``QNetwork.forward`` computes)."""
    for weight, bias in layers[:-1]:
        x = torch.relu(F.linear(x, weight, bias))
    weight, bias = layers[-1]
    return F.linear(x, weight, bias)


class BuiltinEngine(Engine):
    """stable-baselines3 DQN / PPO / A2C on ``TradingEnv``."""

    name = "builtin"

    def __init__(self, *, train_freq: int = TRAIN_FREQ) -> None:
        """``train_freq``: DQN env steps per gradient step (1 for upstream TradeMaster's work per step)."""
        if train_freq < 1:
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
                cfg.algorithm, env, params, seed=cfg.seed, steps_per_epoch=len(splits.train), train_freq=self.train_freq
            )
            agent = BuiltinAgent(
                model,
                algorithm=cfg.algorithm,
                window=params.backward_num_day,
                max_volume=params.max_volume,
                feature_columns=FEATURE_COLUMNS,
                scaler=scaler,
            )
            evaluator = _EpochEvaluator(self, agent, splits, cfg, progress)
            total = params.epochs * len(splits.train)
            if isinstance(model, DQN) and model.device.type == "cpu":
                _DQNLoop(model, env, cfg.seed).learn(total, evaluator)
            else:
                model.learn(total_timesteps=total, callback=_EpochCallback(evaluator))
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
