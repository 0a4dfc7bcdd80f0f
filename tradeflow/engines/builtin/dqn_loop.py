"""DQN on the CPU as one tight loop: SB3's algorithm on the SB3 model's own networks and optimizer
state, without SB3's per-step machinery (``DQNLoop``; why and what is kept: its docstring,
docs/engine.md). Split from ``agent.py`` so that the agent and engine read apart from the
training loop's hand-written gradient step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer

from tradeflow.engines.builtin.env import TradingEnv

if TYPE_CHECKING:
    from tradeflow.engines.builtin.epochs import EpochEvaluator


class DQNLoop:
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
    in tests/unit/test_engine_builtin.py), ``clip_grad_norm_``'s and ``Optimizer.step``'s Python
    (``torch._foreach_norm`` and the fused Adam kernel ``Adam(fused=True)`` runs, on the
    optimizer's own state). Random draws come from generators seeded with the run's seed (numpy
    for exploration, torch for batches), so a run is reproducible, but not draw-for-draw
    identical to SB3's ``learn``.
    """

    def __init__(self, model: DQN, env: TradingEnv, seed: int) -> None:
        if model.n_envs != 1 or model.tau != 1.0 or model.replay_buffer_class not in (None, ReplayBuffer):
            raise ValueError("DQNLoop runs one env, hard target updates and a plain replay buffer")
        optimizer = model.policy.optimizer
        group = optimizer.param_groups[0]
        if (type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1 or group["amsgrad"]
                or group["maximize"] or group["weight_decay"] or group.get("decoupled_weight_decay")):
            raise ValueError(f"DQNLoop needs the policy's plain Adam optimizer; got {optimizer}")
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

    def learn(self, total_timesteps: int, evaluator: EpochEvaluator) -> None:
        with torch.no_grad():
            self._learn(total_timesteps, evaluator)

    def _learn(self, total_timesteps: int, evaluator: EpochEvaluator) -> None:
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
        raise ValueError(f"DQNLoop needs a Linear/ReLU MLP Q-network; got {q_network}")
    return [(layer.weight, layer.bias) for layer in linear]


def _mlp(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The Q-network's forward pass on its own parameters (what ``QNetwork.forward`` computes)."""
    for weight, bias in layers[:-1]:
        x = torch.relu(F.linear(x, weight, bias))
    weight, bias = layers[-1]
    return F.linear(x, weight, bias)
