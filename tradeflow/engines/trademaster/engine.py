"""``engine=trademaster``: upstream TradeMaster's algorithmic-trading DQN behind the ``Engine`` interface.

Upstream (TradeMaster-NTU/TradeMaster @ c1c4838, installed by ``scripts/install_trademaster.sh``)
is driven through its own builders, as its ``tools/algorithmic_trading/train.py`` does:
``build_dataset`` -> ``build_environment`` x3 (train/valid/test) -> ``build_net`` (``QNet``) ->
``build_optimizer`` (Adam) -> ``build_loss`` (MSE) -> ``build_agent`` (``AlgorithmicTradingDQN``) ->
``build_trainer`` (``AlgorithmicTradingTrainer``) -> ``train_and_valid()`` -> ``test()``. This
module only translates: our splits become CSVs in upstream's schema, ``cfg.trademaster`` becomes
an mmcv ``Config``, upstream's best checkpoint becomes a ``TradingAgent`` and its environments'
portfolio values become our ledger and metrics. Import shims: ``compat``; upstream's
data/config format and the ledger read from its env: ``format``; the agent:
``agent``; this module: the engine (training loop, epoch monitor, backtest).

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

``TradeMasterEngine.backtest`` replays the agent's decisions on the same bars and through the same
ledger as every other engine (``simulate``, unit-sized positions); ``upstream_backtest`` replays it
in upstream's environment (upstream's semantics, accounting and shorter episode).
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tradeflow.backtest import Account, BacktestResult, simulate
from tradeflow.config import RunConfig
from tradeflow.engines.trademaster.compat import import_trademaster, upstream_quiet_stdout
from tradeflow.engines.base import PRICE_COLUMN, Engine, TradingAgent, TrainResult, best_epoch_metrics
from tradeflow.engines.trademaster.agent import TradeMasterAgent, greedy_episode
from tradeflow.engines.trademaster.format import (
    UPSTREAM_TRAINER,
    build_environment,
    dataset_attributes,
    ledger_from_environment,
    min_rows,
    upstream_config,
    write_upstream_csv,
)
from tradeflow.errors import InputError
from tradeflow.features import FEATURE_COLUMNS

if TYPE_CHECKING:
    import torch

    from tradeflow.features import Splits

log = logging.getLogger(__name__)

UPSTREAM_LOG = "upstream_stdout.log"


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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

    def training_label(self, cfg: RunConfig) -> str:
        return f"upstream dqn {cfg.trademaster.epochs} ep"

    def training_description(self, cfg: RunConfig) -> str:
        p = cfg.trademaster
        return (f"upstream TradeMaster DQN (QNet {tuple(p.hidden_dims)}, AlgorithmicTradingDQN), {p.epochs} epochs, "
                f"window {p.backward_num_day}")

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
        """The agent on the same bars and through the same ledger as every engine (``simulate``).

        Trading starts at the close of row ``window - 1`` and runs to the frame's last bar, as
        ``Engine.backtest`` does (upstream's own env stops ``forward_num_day + 1`` bars earlier:
        ``upstream_backtest``). Upstream's decisions are kept: at each close the QNet sees the
        window and the ledger's own cash and units and its action *adds* ``a - max_volume`` units;
        the ledger is ``simulate(position_sizing="units")`` with ``cfg.trademaster``'s initial amount
        and fee, so a unit is a share, not a fraction of equity (exposure counts bars held; the
        comparison in docs/engine.md also states the capital invested). Per-metric differences
        from upstream's ledger: docs/engine.md.
        """
        if not isinstance(agent, TradeMasterAgent):
            return super().backtest(agent, frame, cfg)
        params = cfg.trademaster
        features = frame[list(agent.feature_columns)].to_numpy(np.float64)
        prices = frame[PRICE_COLUMN].to_numpy(np.float64)
        start = agent.window - 1
        if len(frame) <= start:
            raise InputError(f"backtest needs at least window={agent.window} rows; got {len(frame)}")
        c = float(params.transaction_cost_pct)
        # the same Account simulate replays below, stepped here so the QNet sees its cash and units
        ledger = Account(initial_amount=params.initial_amount, transaction_cost_pct=c, max_volume=agent.max_volume,
                         position_sizing="units")
        held = []
        for t in range(start, len(frame)):
            state = agent.upstream_state(features[t - start:t + 1], cash=ledger.cash, units=ledger.units)
            target = ledger.target + int(np.argmax(agent.q_values(state))) - agent.max_volume
            held.append(target)
            if t < len(frame) - 1:  # the last decision is recorded, not traded (simulate)
                ledger.rebalance(target, float(prices[t]))
                held[-1] = ledger.target  # a ruined account only goes flat
        table = simulate(prices[start:], np.asarray(held, dtype=np.int64), initial_amount=params.initial_amount,
                         transaction_cost_pct=c, max_volume=agent.max_volume, position_sizing="units",
                         dates=frame["date"].to_numpy()[start:])
        return BacktestResult.from_table(table)

    def upstream_backtest(self, agent: TradingAgent, frame: pd.DataFrame, cfg: RunConfig) -> BacktestResult:
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
