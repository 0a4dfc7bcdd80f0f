"""The TradeMaster agent: upstream's trained ``QNet`` as our ``TradingAgent`` (observation layout,
action mapping, save/load) and the greedy episode upstream's ``trainer.test`` runs. Apart from the
engine so that loading and acting with a saved agent does not read the training code."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tradeflow.config import TradeMasterParams
from tradeflow.engines.trademaster.compat import UPSTREAM_COMMIT, import_trademaster, upstream_quiet_stdout
from tradeflow.engines.base import ActionResult

if TYPE_CHECKING:
    import torch

CHECKPOINT_FILE = "qnet.pth"
META_FILE = "agent.json"


class TradeMasterAgent:
    """Upstream's ``QNet`` (best checkpoint) plus what it needs to read our feature windows.

    ``upstream_state`` builds upstream's observation from a (window, features) block: the block
    transposed and flattened (feature after feature, oldest value first), then ``cash`` and held
    ``units``, raw. ``act`` maps upstream's position *changes* to our *target* positions:
    target = clip(units + a - max_volume, -max_volume, max_volume), a target's score the best
    Q-value among the actions reaching it (targets out of one step's reach have none). Cash is not
    part of our observation (nor of the pyfunc model's input): unless given, ``act`` feeds the
    initial amount, which is upstream's state exactly at an episode's start and an approximation
    once a position is held. ``TradeMasterEngine.backtest`` uses upstream's env and its exact cash.
    """

    engine = "trademaster"

    def __init__(
        self,
        qnet: torch.nn.Module,
        *,
        window: int,
        max_volume: int,
        feature_columns: tuple[str, ...],
        initial_amount: float,
        transaction_cost_pct: float,
        forward_num_day: int,
        future_weights: float,
        hidden_dims: tuple[int, ...],
        explore_rate: float,
        device: str = "cpu",
    ) -> None:
        self.qnet = qnet.eval()
        self.window = int(window)
        self.max_volume = int(max_volume)
        self.feature_columns = tuple(feature_columns)
        self.initial_amount = float(initial_amount)
        self.transaction_cost_pct = float(transaction_cost_pct)
        self.forward_num_day = int(forward_num_day)
        self.future_weights = float(future_weights)
        self.hidden_dims = tuple(int(d) for d in hidden_dims)
        self.explore_rate = float(explore_rate)
        self.device = device

    @property
    def state_dim(self) -> int:
        return self.window * len(self.feature_columns) + 2

    @property
    def action_dim(self) -> int:
        return 2 * self.max_volume + 1

    def params(self) -> TradeMasterParams:
        """The ``TradeMasterParams`` that rebuild this agent's environment (accounting and window)."""
        return TradeMasterParams(
            backward_num_day=self.window, forward_num_day=self.forward_num_day, max_volume=self.max_volume,
            initial_amount=self.initial_amount, transaction_cost_pct=self.transaction_cost_pct,
            future_weights=self.future_weights, hidden_dims=self.hidden_dims, explore_rate=self.explore_rate,
        )

    def upstream_state(self, features: np.ndarray, *, cash: float, units: float) -> np.ndarray:
        expected = (self.window, len(self.feature_columns))
        features = np.asarray(features, dtype=np.float64)
        if features.shape != expected:
            raise ValueError(f"features must have shape {expected} (window, features); got {features.shape}")
        return np.concatenate([features.T.reshape(-1), [float(cash), float(units)]])

    def q_values(self, state: np.ndarray) -> np.ndarray:
        """Upstream's ``QNet`` forward pass on one upstream state (what its trainer's test argmaxes)."""
        import torch

        with torch.no_grad():
            tensor = torch.as_tensor(np.asarray(state), dtype=torch.float32, device=self.device).unsqueeze(0)
            return self.qnet(tensor)[0].cpu().numpy().astype(np.float64)

    def act(self, features: np.ndarray, position: float = 0.0, *, cash: float | None = None) -> ActionResult:
        units = int(round(float(position) * self.max_volume))
        state = self.upstream_state(features, cash=self.initial_amount if cash is None else cash, units=units)
        values = self.q_values(state)
        scores: dict[int, float] = {}
        for action, value in enumerate(values):
            target = int(np.clip(units + action - self.max_volume, -self.max_volume, self.max_volume))
            scores[target] = max(scores.get(target, -math.inf), float(value))
        best = int(np.argmax(values))
        return ActionResult(
            action=int(np.clip(units + best - self.max_volume, -self.max_volume, self.max_volume)),
            scores=scores,
        )

    def save(self, directory: Path) -> None:
        """``qnet.pth`` (the QNet's state dict: tensors only) and ``agent.json`` (how to rebuild it)."""
        import torch

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.qnet.state_dict().items()}, directory / CHECKPOINT_FILE)
        meta = {
            "engine": self.engine,
            "algorithm": "dqn",
            "upstream": {"repository": "TradeMaster-NTU/TradeMaster", "commit": UPSTREAM_COMMIT,
                         "net": "QNet", "agent": "AlgorithmicTradingDQN"},
            "window": self.window,
            "max_volume": self.max_volume,
            "feature_columns": list(self.feature_columns),
            "state_layout": "features.T.flatten() (feature-major, oldest first) + [cash, units]",
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "action_meaning": "a - max_volume units added to the position (upstream); act() returns targets",
            "hidden_dims": list(self.hidden_dims),
            "explore_rate": self.explore_rate,
            "initial_amount": self.initial_amount,
            "transaction_cost_pct": self.transaction_cost_pct,
            "forward_num_day": self.forward_num_day,
            "future_weights": self.future_weights,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> TradeMasterAgent:
        """Rebuild upstream's ``QNet`` with upstream's ``build_net`` and load the weights (weights_only)."""
        import torch

        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        upstream = import_trademaster()
        with upstream_quiet_stdout(io.StringIO()):
            qnet = upstream.build_net({
                "type": "QNet", "dims": tuple(meta["hidden_dims"]), "state_dim": int(meta["state_dim"]),
                "action_dim": int(meta["action_dim"]), "explore_rate": float(meta["explore_rate"]),
            })
        qnet.load_state_dict(torch.load(directory / CHECKPOINT_FILE, map_location=device, weights_only=True))
        return cls(
            qnet.to(device),
            window=int(meta["window"]), max_volume=int(meta["max_volume"]),
            feature_columns=tuple(meta["feature_columns"]), initial_amount=float(meta["initial_amount"]),
            transaction_cost_pct=float(meta["transaction_cost_pct"]), forward_num_day=int(meta["forward_num_day"]),
            future_weights=float(meta["future_weights"]), hidden_dims=tuple(meta["hidden_dims"]),
            explore_rate=float(meta["explore_rate"]), device=device,
        )


def greedy_episode(agent: TradeMasterAgent, env: Any) -> None:
    """Run ``env`` to its end with the agent's greedy action, as upstream's ``trainer.test`` does."""
    state = env.reset()
    done = False
    while not done:
        action = np.int64(np.argmax(agent.q_values(state)))
        state, _, done, _ = env.step(action)
