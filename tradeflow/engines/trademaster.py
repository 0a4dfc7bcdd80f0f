"""``engine=trademaster``: upstream TradeMaster's algorithmic-trading DQN behind the ``Engine`` interface.

Upstream (TradeMaster-NTU/TradeMaster @ c1c4838, installed by ``scripts/install_trademaster.sh``)
is driven through its own builders, as its ``tools/algorithmic_trading/train.py`` does:
``build_dataset`` -> ``build_environment`` x3 (train/valid/test) -> ``build_net`` (``QNet``) ->
``build_optimizer`` (Adam) -> ``build_loss`` (MSE) -> ``build_agent`` (``AlgorithmicTradingDQN``) ->
``build_trainer`` (``AlgorithmicTradingTrainer``) -> ``train_and_valid()`` -> ``test()``. This
module only translates: our splits become CSVs in upstream's schema, ``cfg.trademaster`` becomes
an mmcv ``Config``, upstream's best checkpoint becomes a ``TradingAgent`` and its environments'
portfolio values become our ledger and metrics. Import shims: ``_trademaster_compat``.

What is upstream's, kept as is (docs/trademaster_engine.md measures the consequences):

* the environment's semantics: an action ``a`` in ``0..2*max_volume`` *changes* the held units by
  ``a - max_volume`` (unbounded position), a sale that grows a short is charged like a purchase,
  and an episode stops ``forward_num_day + 1`` bars before the split's end (its reward reads
  those future prices even in valid/test);
* the observation: for each feature column its ``window`` values (oldest first), feature after
  feature, then cash and held units, raw. The feature columns are ours (``FEATURE_COLUMNS``, the
  z-features: upstream's config also lists raw prices, which we leave out so that the agent acts
  on the same columns as the builtin one and the pyfunc model input);
* the DQN settings of upstream's BTC config: gamma 0.9, batch 64, horizon 128, gradient clip 3,
  ``soft_update_tau`` 0 (its target network is never updated), a constant epsilon
  (``explore_rate``), best epoch by validation total return.

``TradeMasterEngine.backtest`` replays an agent in upstream's environment (upstream's semantics and
accounting) and reports the shared metrics on those portfolio values.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradeflow.backtest import BacktestResult
from tradeflow.config import RunConfig, TradeMasterParams
from tradeflow.engines._trademaster_compat import (
    UPSTREAM_COMMIT,
    Upstream,
    import_trademaster,
    upstream_quiet_stdout,
)
from tradeflow.engines.base import PRICE_COLUMN, ActionResult, Engine, TradingAgent, TrainResult, best_epoch_metrics
from tradeflow.errors import InputError
from tradeflow.features import FEATURE_COLUMNS

if TYPE_CHECKING:
    import torch

    from tradeflow.features import Splits

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "qnet.pth"
META_FILE = "agent.json"
UPSTREAM_LOG = "upstream_stdout.log"

#: upstream's configs/algorithmic_trading/algorithmic_trading_BTC_deepscalper_deepscalper_adam_mse.py
UPSTREAM_AGENT = {
    "type": "AlgorithmicTradingDQN", "max_step": 12345, "reward_scale": 1, "repeat_times": 1, "gamma": 0.9,
    "batch_size": 64, "clip_grad_norm": 3.0, "soft_update_tau": 0, "state_value_tau": 0.005,
}
UPSTREAM_TRAINER = {
    "type": "AlgorithmicTradingTrainer", "batch_size": 64, "horizon_len": 128, "if_remove": False,
    "if_discrete": True, "if_off_policy": True, "if_keep_save": True, "if_over_write": False,
    "if_save_buffer": False,
}
#: the CSV columns upstream's dataset files carry before the features (plus an unnamed int index)
UPSTREAM_PRICE_COLUMNS = ("open", "high", "low", "close", "adjcp")


# --- data and config, upstream's way ------------------------------------------------------------


def min_rows(params: TradeMasterParams) -> int:
    """Rows a split needs for upstream's env to take one step: it starts after ``window`` bars and
    ends ``forward_num_day + 1`` bars before the last (one more than our ``split_for_run`` asks)."""
    return params.backward_num_day + params.forward_num_day + 2


def write_upstream_csv(frame: pd.DataFrame, path: Path, *, symbol: str, first_index: int = 0,
                       feature_columns: tuple[str, ...] = FEATURE_COLUMNS) -> Path:
    """``frame`` in upstream's dataset schema: a unique integer index, ``tic``, ``date``, the OHLC and
    ``adjcp`` prices (``adjcp`` = ``close`` if absent), then the feature columns. Floats are written
    with full precision so upstream reads back exactly our numbers."""
    out = pd.DataFrame(index=pd.RangeIndex(first_index, first_index + len(frame)))
    out["tic"] = symbol
    out["date"] = pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d").to_numpy()
    for column in UPSTREAM_PRICE_COLUMNS:
        source = column if column in frame.columns else "close"
        out[column] = frame[source].to_numpy(np.float64)
    for column in feature_columns:
        out[column] = frame[column].to_numpy(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path)
    return path


def dataset_attributes(params: TradeMasterParams) -> dict[str, float | int]:
    """What upstream's environment reads from the dataset object (``get_attr(self.dataset, ...)``);
    its dataset class does not take them from the config, so they are set as attributes."""
    return {
        "initial_amount": float(params.initial_amount),
        "transaction_cost_pct": float(params.transaction_cost_pct),
        "max_volume": int(params.max_volume),
        "future_weights": float(params.future_weights),
    }


def upstream_config(
    paths: dict[str, Path],
    params: TradeMasterParams,
    *,
    seed: int,
    work_dir: Path,
    buffer_size: int,
    feature_columns: tuple[str, ...] = FEATURE_COLUMNS,
) -> dict[str, Any]:
    """The config dict upstream's builders read (the keys of its algorithmic-trading configs),
    with absolute paths (upstream joins them onto its package root, which keeps absolute ones)."""
    n_features = len(feature_columns)
    return {
        "task_name": "algorithmic_trading",
        "data": {
            "type": "AlgorithmicTradingDataset",
            "data_path": str(paths["train"].parent),
            "train_path": str(paths["train"]),
            "valid_path": str(paths["valid"]),
            "test_path": str(paths["test"]),
            "test_dynamic_path": str(paths["test"]),  # read only when test_dynamic != -1
            "test_dynamic": "-1",
            "tech_indicator_list": list(feature_columns),
            "backward_num_day": int(params.backward_num_day),
            "forward_num_day": int(params.forward_num_day),
        },
        "environment": {"type": "AlgorithmicTradingEnvironment"},
        "transition": {"type": "Transition"},
        "agent": dict(UPSTREAM_AGENT),
        "trainer": {
            **UPSTREAM_TRAINER,
            "epochs": int(params.epochs),
            "work_dir": str(work_dir),
            "seeds_list": (int(seed),),
            "buffer_size": int(buffer_size),
            "num_threads": 1,  # a 2-layer MLP gains nothing from more; also keeps runs reproducible
        },
        "loss": {"type": "MSELoss"},
        "optimizer": {"type": "Adam", "lr": float(params.learning_rate)},
        "act": {
            "type": "QNet",
            "state_dim": n_features * int(params.backward_num_day) + 2,
            "action_dim": 2 * int(params.max_volume) + 1,
            "dims": tuple(int(d) for d in params.hidden_dims),
            "explore_rate": float(params.explore_rate),
        },
        "cri": None,
    }


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_environment(upstream: Upstream, frame_path: Path, params: TradeMasterParams, *, task: str,
                      feature_columns: tuple[str, ...] = FEATURE_COLUMNS) -> Any:
    """One upstream ``AlgorithmicTradingEnvironment`` over a CSV written by ``write_upstream_csv``
    (``task`` "train", "valid" or "test"), built by upstream's dataset and environment builders."""
    paths = {"train": frame_path, "valid": frame_path, "test": frame_path}
    config = upstream.Config(upstream_config(paths, params, seed=0, work_dir=frame_path.parent, buffer_size=1,
                                             feature_columns=feature_columns))
    dataset = upstream.build_dataset(config)
    for name, value in dataset_attributes(params).items():
        setattr(dataset, name, value)
    return upstream.build_environment(config, default_args={"dataset": dataset, "task": task})


# --- upstream's env memories -> our ledger --------------------------------------------------------


def ledger_from_environment(env: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """A finished upstream episode as a ``simulate``-style table, one row per marked bar.

    Upstream marks ``asset_memory[k]`` at the close of row ``window - 1 + k`` of ``frame`` (the
    CSV the env read) after trading there at the previous close; ``compound_memory[k]`` is
    ``[cash, units]`` after the k-th trade. Columns: ``date``, ``price``, ``action`` (units held
    after that close's decision; upstream's position is a number of units, not bounded by
    ``max_volume``), ``position`` (units / max_volume), ``units``, ``cash``, ``equity``,
    ``benchmark`` (buy-and-hold of the initial amount, no fees), ``drawdown``, ``trade``,
    ``cost`` (upstream's fee: ``c/(1-c)`` of the notional when the position grows, ``c`` when it
    shrinks).
    """
    equity = np.asarray(env.asset_memory, dtype=np.float64)
    book = np.asarray(env.compound_memory, dtype=np.float64).reshape(len(env.compound_memory), 2)
    n = len(equity)
    start = int(env.backward_num_day) - 1
    rows = frame.iloc[start:start + n]
    if len(rows) != n:
        raise ValueError(f"frame has {len(frame)} rows; the episode marked {n} bars from row {start}")
    prices = rows[PRICE_COLUMN].to_numpy(np.float64)
    # after the trade at bar t: book[t + 1]; the last marked bar is not traded (the episode ends)
    after = np.vstack([book[1:n], book[n - 1:n]]) if n > 1 else book[:1]
    cash, units = after[:, 0], after[:, 1]
    traded = np.diff(units, prepend=0.0)
    grows = np.abs(units) - np.abs(np.concatenate([[0.0], units[:-1]])) >= 0
    c = float(env.transaction_cost_pct)
    cost = np.abs(traded) * prices * np.where(grows, c / (1.0 - c), c)
    max_volume = float(env.max_volume)
    return pd.DataFrame({
        "date": pd.to_datetime(rows["date"]).to_numpy(),
        "price": prices,
        "action": units.round().astype(np.int64),
        "position": units / max_volume,
        "units": units,
        "cash": cash,
        "equity": equity,
        "benchmark": float(env.initial_amount) * prices / prices[0],
        "drawdown": equity / np.maximum.accumulate(equity) - 1.0,
        "trade": traded != 0.0,
        "cost": np.where(traded != 0.0, cost, 0.0),
    })


# --- the agent ------------------------------------------------------------------------------------


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


# --- the engine -----------------------------------------------------------------------------------


class _EpochMonitor:
    """Watches upstream's train and valid environments (wrapping their ``step``) to report each epoch:
    upstream's trainer has no callback, and an epoch ends exactly when a validation episode ends."""

    def __init__(self, envs: dict[str, Any], splits: Splits, cfg: RunConfig,
                 progress: Callable[[dict], None] | None) -> None:
        self.splits, self.cfg, self.progress = splits, cfg, progress
        self.curve: list[dict] = []
        self.train_steps = 0
        self.valid_seconds = 0.0
        self._epoch_steps = 0
        self._epoch_started = time.perf_counter()
        self._valid_started: float | None = None
        self._train_return = float("nan")
        self._wrap(envs["train"], self._after_train_step)
        self._wrap(envs["valid"], self._after_valid_step)

    @staticmethod
    def _wrap(env: Any, after: Callable[[Any, bool], None]) -> None:
        step = env.step

        def observed_step(action: Any) -> Any:
            result = step(action)
            after(env, bool(result[2]))
            return result

        env.step = observed_step

    def _after_train_step(self, env: Any, done: bool) -> None:
        self.train_steps += 1
        self._epoch_steps += 1
        if done:
            self._train_return = float(env.asset_memory[-1] / env.asset_memory[0] - 1.0)

    def _after_valid_step(self, env: Any, done: bool) -> None:
        if self._valid_started is None:
            self._valid_started = time.perf_counter()
        if not done:
            return
        now = time.perf_counter()
        self.valid_seconds += now - self._valid_started
        learning_seconds = max(self._valid_started - self._epoch_started, 1e-9)
        valid = BacktestResult.from_table(ledger_from_environment(env, self.splits.valid)).metrics
        epochs = self.cfg.trademaster.epochs
        row = {
            "epoch": len(self.curve) + 1,
            "timesteps": self.train_steps,
            "train_total_return": self._train_return,  # the epoch's exploring episode, as upstream reports it
            "valid_total_return": valid["total_return"],
            "valid_sharpe": valid["sharpe"],
            "steps_per_s": self._epoch_steps / learning_seconds,
            "epsilon": float(self.cfg.trademaster.explore_rate),
        }
        self.curve.append(row)
        log.info("epoch %d/%d  timesteps %d  valid_return %+.1f%%  %.0f steps/s (upstream TradeMaster)",
                 row["epoch"], epochs, row["timesteps"], 100 * row["valid_total_return"], row["steps_per_s"])
        if self.progress is not None:
            self.progress({**row, "epochs": epochs})
        self._valid_started = None
        self._epoch_steps = 0
        self._epoch_started = time.perf_counter()


@contextmanager
def _torch_state_kept():
    """Upstream's trainer leaves process-wide torch state behind: ``set_num_threads``,
    ``set_default_dtype``, ``cudnn.deterministic`` and, at the end of ``train_and_valid``,
    ``torch.set_grad_enabled(False)`` (which would break any later training in the process). Undone here."""
    import torch

    saved = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
             torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.set_default_dtype(saved[1])
        torch.set_grad_enabled(saved[2])
        torch.backends.cudnn.deterministic = saved[3]


class TradeMasterEngine(Engine):
    """Upstream TradeMaster's algorithmic-trading DQN (``QNet`` + ``AlgorithmicTradingDQN`` + trainer)."""

    name = "trademaster"

    def __init__(self) -> None:
        self.upstream = import_trademaster()  # EngineUnavailable (one line + install command) if absent

    def train(
        self,
        splits: Splits,
        cfg: RunConfig,
        *,
        progress: Callable[[dict], None] | None = None,
        workdir: Path,
    ) -> TrainResult:
        """Upstream's ``train_and_valid`` (best epoch by validation return) then its ``test``; the best
        checkpoint is returned as a ``TradeMasterAgent`` (also saved to ``workdir/agent``)."""
        import torch

        if cfg.algorithm != "dqn":
            raise InputError(f"engine 'trademaster' trains upstream's DQN only; algorithm={cfg.algorithm!r} "
                             "is available with engine=builtin")
        params = cfg.trademaster
        need = min_rows(params)
        for name in ("train", "valid", "test"):
            rows = len(getattr(splits, name))
            if rows < need:
                raise InputError(f"{cfg.symbol}: {name} split has {rows} rows; upstream's env needs at least "
                                 f"{need} (window {params.backward_num_day} + horizon {params.forward_num_day} + 2)")
        started = time.perf_counter()
        root = Path(workdir) / "trademaster"
        paths: dict[str, Path] = {}
        offset = 0
        for name in ("train", "valid", "test"):
            frame = getattr(splits, name)
            paths[name] = write_upstream_csv(frame, root / "data" / f"{name}.csv", symbol=cfg.symbol,
                                             first_index=offset)
            offset += len(frame)
        horizon = UPSTREAM_TRAINER["horizon_len"]
        # upstream's default 1e6 is preallocated per field; the whole run fits in this (it never wraps either way)
        buffer_size = params.epochs * len(splits.train) + 2 * horizon
        config = self.upstream.Config(upstream_config(paths, params, seed=cfg.seed, work_dir=root / "work_dir",
                                                      buffer_size=buffer_size))
        device = resolve_device(params.device)
        up = self.upstream
        with (root / UPSTREAM_LOG).open("w") as sink, upstream_quiet_stdout(sink), _torch_state_kept():
            up.set_seed(cfg.seed)
            dataset = up.build_dataset(config)
            for name, value in dataset_attributes(params).items():
                setattr(dataset, name, value)
            envs = {task: up.build_environment(config, default_args={"dataset": dataset, "task": task})
                    for task in ("train", "valid", "test")}
            state_dim, action_dim = envs["train"].state_dim, envs["train"].action_dim
            config.act.update({"state_dim": state_dim, "action_dim": action_dim})
            act = up.build_net(config.act)
            optimizer = up.build_optimizer(config, default_args={"params": act.parameters()})
            agent = up.build_agent(config, default_args={
                "action_dim": action_dim, "state_dim": state_dim, "act": act, "cri": None,
                "act_optimizer": optimizer, "cri_optimizer": None, "criterion": up.build_loss(config),
                "transition": up.build_transition(config), "device": device,
            })
            trainer = up.build_trainer(config, default_args={
                "train_environment": envs["train"], "valid_environment": envs["valid"],
                "test_environment": envs["test"], "agent": agent, "device": device,
            })
            monitor = _EpochMonitor(envs, splits, cfg, progress)
            learn_started = time.perf_counter()
            trainer.train_and_valid()  # leaves the best epoch's weights loaded in agent.act
            learn_seconds = time.perf_counter() - learn_started
            trainer.test()  # reloads best.pth and runs the test env
            best_epoch = int(torch.load(Path(trainer.checkpoints_path) / "best.pth", map_location="cpu")["epoch"])
        tested = BacktestResult.from_table(ledger_from_environment(envs["test"], splits.test)).metrics
        result_agent = TradeMasterAgent(
            copy.deepcopy(agent.act).cpu(),
            window=params.backward_num_day, max_volume=params.max_volume, feature_columns=FEATURE_COLUMNS,
            initial_amount=params.initial_amount, transaction_cost_pct=params.transaction_cost_pct,
            forward_num_day=params.forward_num_day, future_weights=params.future_weights,
            hidden_dims=params.hidden_dims, explore_rate=params.explore_rate,
        )
        result_agent.save(Path(workdir) / "agent")
        best = monitor.curve[best_epoch - 1]
        return TrainResult(
            agent=result_agent,
            learning_curve=monitor.curve,
            best_epoch=best_epoch,
            timesteps=monitor.train_steps,
            train_seconds=time.perf_counter() - started,
            env_steps_per_s=monitor.train_steps / max(learn_seconds - monitor.valid_seconds, 1e-9),
            extra_metrics={
                **best_epoch_metrics(best),
                # upstream's own trainer.test() on the test split, scored with the shared metrics
                **{f"upstream_test_{k}": float(tested[k]) for k in ("total_return", "sharpe", "max_drawdown")},
            },
        )

    def load_agent(self, directory: Path) -> TradeMasterAgent:
        return TradeMasterAgent.load(directory)

    def backtest(self, agent: TradingAgent, frame: pd.DataFrame, cfg: RunConfig) -> BacktestResult:
        """The agent greedily in upstream's environment over ``frame`` (upstream's position
        semantics, accounting and episode end), scored with the shared ``performance_metrics``.

        As upstream's env does, trading starts at the close of row ``window - 1`` and the episode
        ends ``forward_num_day + 1`` rows before the frame's last. Agents of other engines get the
        default (our ``simulate``) backtest.
        """
        if not isinstance(agent, TradeMasterAgent):
            return super().backtest(agent, frame, cfg)
        params = agent.params()
        if len(frame) < min_rows(params):
            raise InputError(f"backtest needs at least {min_rows(params)} rows for upstream's env; got {len(frame)}")
        with tempfile.TemporaryDirectory(prefix="tm-backtest-") as tmp, \
                upstream_quiet_stdout(io.StringIO()):
            path = write_upstream_csv(frame, Path(tmp) / "frame.csv", symbol=cfg.symbol,
                                      feature_columns=agent.feature_columns)
            env = build_environment(self.upstream, path, params, task="test", feature_columns=agent.feature_columns)
            env.work_dir = tmp
            greedy_episode(agent, env)
        return BacktestResult.from_table(ledger_from_environment(env, frame))
