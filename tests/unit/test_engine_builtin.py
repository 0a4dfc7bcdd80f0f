"""The builtin engine on real BTC data: reproducible training, best-on-valid selection, save/load, registry."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import BTC_CSV, require_shared_data
from tradeflow.config import RunConfig, resolve_config
from tradeflow.engines import EngineUnavailable, TradingAgent, TrainResult, get_engine
from tradeflow.engines.builtin import BuiltinEngine
from tradeflow.engines.builtin.agent import make_env
from tradeflow.features import FEATURE_COLUMNS, Splits, compute_features

WINDOW = 10  # the default backward_num_day


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def splits() -> Splits:
    require_shared_data()
    frame = pd.read_csv(BTC_CSV, index_col=0).iloc[29:]  # upstream back-filled its first 29 rows
    frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
    frame = frame.iloc[-560:].reset_index(drop=True)  # 2020-01 .. 2021-07
    parts = {"train": frame.iloc[:320], "valid": frame.iloc[320:440], "test": frame.iloc[440:]}
    return Splits(**{name: part.reset_index(drop=True) for name, part in parts.items()})


@pytest.fixture(scope="module")
def cfg() -> RunConfig:
    return resolve_config({"symbol": "BTC"})  # defaults: DQN, 3 epochs, window 10, 64x64


@pytest.fixture(scope="module")
def trained(splits, cfg, tmp_path_factory) -> tuple[TrainResult, list[dict], list[str]]:
    updates: list[dict] = []
    handler = _Lines()
    logger = logging.getLogger("tradeflow.engines.builtin.agent")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = BuiltinEngine().train(splits, cfg, progress=updates.append, workdir=tmp_path_factory.mktemp("work"))
    finally:
        logger.removeHandler(handler)
    return result, updates, handler.lines


def without_timing(curve: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "steps_per_s"} for row in curve]


def test_same_seed_same_data_trains_identically(trained, splits, cfg, tmp_path):
    engine = BuiltinEngine()
    first = trained[0]
    threads = torch.get_num_threads()
    second = engine.train(splits, cfg, workdir=tmp_path)
    assert torch.get_num_threads() == threads  # training restores the caller's torch settings
    assert without_timing(second.learning_curve) == without_timing(first.learning_curve)
    assert second.best_epoch == first.best_epoch
    test_metrics = [engine.backtest(result.agent, splits.test, cfg).metrics for result in (first, second)]
    assert test_metrics[0] == test_metrics[1]


def test_learning_curve_and_best_checkpoint(trained, splits, cfg):
    result, updates, lines = trained
    curve = result.learning_curve
    assert [row["epoch"] for row in curve] == [1, 2, 3]
    assert [row["timesteps"] for row in curve] == [320, 640, 960]
    assert result.timesteps == 960
    assert all(row["epsilon"] == pytest.approx(0.05) for row in curve)  # annealed in the first 25%
    valid_returns = [row["valid_total_return"] for row in curve]
    assert result.best_epoch == 1 + int(np.argmax(valid_returns))
    # the returned agent is the selected checkpoint, not the last one
    replay = BuiltinEngine().backtest(result.agent, splits.valid, cfg).metrics
    assert replay["total_return"] == curve[result.best_epoch - 1]["valid_total_return"]
    assert result.extra_metrics["best_valid_total_return"] == max(valid_returns)
    assert result.env_steps_per_s > 0 and result.train_seconds > 0
    assert updates == curve
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3  timesteps 320  valid_return ")
    assert lines[0].endswith(" steps/s")


def test_agent_acts_on_a_window(trained, splits):
    agent = trained[0].agent
    assert isinstance(agent, TradingAgent)
    assert agent.feature_columns == FEATURE_COLUMNS and agent.window == WINDOW and agent.max_volume == 1
    window = splits.test[list(FEATURE_COLUMNS)].to_numpy()[:WINDOW]
    result = agent.act(window, position=1.0)
    assert sorted(result.scores) == [-1, 0, 1]
    assert result.action == max(result.scores, key=result.scores.get)
    with pytest.raises(ValueError, match=r"\(10, 11\)"):
        agent.act(window[:-1])


def test_saved_agent_is_self_contained(trained, splits, cfg, tmp_path):
    agent = trained[0].agent
    agent.save(tmp_path / "agent")
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == ["agent.json", "model.zip"]
    meta = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert (meta["algorithm"], meta["window"], meta["feature_columns"]) == ("dqn", WINDOW, list(FEATURE_COLUMNS))
    loaded = get_engine("builtin").load_agent(tmp_path / "agent")
    window = splits.test[list(FEATURE_COLUMNS)].to_numpy()[-WINDOW:]
    assert loaded.act(window, -1.0) == agent.act(window, -1.0)
    engine = BuiltinEngine()
    assert engine.backtest(loaded, splits.test, cfg).metrics == engine.backtest(agent, splits.test, cfg).metrics


def test_backtest_trades_from_the_first_full_window(trained, splits, cfg):
    result = BuiltinEngine().backtest(trained[0].agent, splits.test, cfg)
    table = result.table
    assert len(table) == len(splits.test) - WINDOW + 1
    assert table["date"].iloc[0] == splits.test["date"].iloc[WINDOW - 1]
    assert table["equity"].iloc[0] == table["benchmark"].iloc[0] == cfg.trademaster.initial_amount
    np.testing.assert_allclose(table["price"], splits.test["close"].iloc[WINDOW - 1 :])
    assert result.metrics["benchmark_total_return"] == pytest.approx(
        splits.test["close"].iloc[-1] / splits.test["close"].iloc[WINDOW - 1] - 1
    )


def test_env_rollout_of_the_policy_matches_the_backtest(trained, splits, cfg):
    """Same observation in the env and in ``act``, same ledger in the env and in ``simulate``."""
    agent = trained[0].agent
    env = make_env(splits.test, agent.scaler, cfg.trademaster, shaping=False)
    obs, _ = env.reset()
    done = False
    while not done:
        action, _ = agent.model.predict(obs, deterministic=True)
        obs, _, done, _, info = env.step(action)
    table = BuiltinEngine().backtest(agent, splits.test, cfg).table
    assert info["equity"] == pytest.approx(table["equity"].iloc[-1], rel=1e-12)


def test_dqn_learns_to_trade_a_predictable_cycle(cfg, tmp_path):
    """A 40-bar sine cycle is fully readable from the SMA features: the agent must ride both legs."""
    close = 100.0 + 20.0 * np.sin(2 * np.pi * np.arange(600) / 40)
    bars = pd.DataFrame({
        "date": pd.bdate_range("2020-01-01", periods=600), "open": close, "high": close * 1.01,
        "low": close * 0.99, "close": close, "adjcp": close, "volume": 1.0,
    })
    frame = compute_features(bars)
    cycle = Splits(*(frame.iloc[lo:hi].reset_index(drop=True) for lo, hi in ((0, 330), (330, 450), (450, None))))
    engine = BuiltinEngine()
    metrics = engine.backtest(engine.train(cycle, cfg, workdir=tmp_path).agent, cycle.test, cfg).metrics
    assert metrics["total_return"] > 1.0  # buy-and-hold is about -19% on this stretch
    assert metrics["excess_total_return"] > 1.0
    assert metrics["exposure"] > 0.5 and metrics["num_trades"] >= 4


@pytest.mark.parametrize("algorithm", ["ppo", "a2c"])
def test_policy_gradient_agents_score_probabilities(splits, cfg, algorithm, tmp_path):
    run_cfg = cfg.override({"algorithm": algorithm, "epochs": 1, "hidden_dims": "32,32"})
    result = BuiltinEngine().train(splits, run_cfg, workdir=tmp_path)
    assert result.learning_curve[0]["entropy"] > 0
    scores = result.agent.act(splits.valid[list(FEATURE_COLUMNS)].to_numpy()[:WINDOW]).scores
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    result.agent.save(tmp_path / "agent")
    assert json.loads((tmp_path / "agent" / "agent.json").read_text())["algorithm"] == algorithm


def test_engine_registry(monkeypatch):
    assert get_engine("builtin").name == "builtin"
    with pytest.raises(ValueError, match="'nope'"):
        get_engine("nope")
    monkeypatch.setitem(sys.modules, "tradeflow.engines.trademaster.engine", None)  # as if it failed to import
    with pytest.raises(EngineUnavailable, match="trademaster"):
        get_engine("trademaster")


def test_batched_greedy_path_matches_one_act_per_close(trained, splits, monkeypatch):
    """The backtest's one-pass path (every window at every position) is the per-close ``act`` walk,
    also when the windows go through the network in several chunks."""
    from tradeflow.engines.builtin import agent as agent_module

    agent = trained[0].agent
    for frame in (splits.valid, splits.test):
        features = frame[list(FEATURE_COLUMNS)].to_numpy(np.float64)
        held, walked = 0, []
        for end in range(WINDOW, len(features) + 1):
            held = agent.act(features[end - WINDOW : end], held / agent.max_volume).action
            walked.append(held)
        assert agent.greedy_targets(features) == walked
        with monkeypatch.context() as patch:
            patch.setattr(agent_module, "GREEDY_BATCH_FLOATS", 7 * 3 * (WINDOW * len(FEATURE_COLUMNS) + 1))
            assert agent.greedy_targets(features) == walked  # 7 windows per pass
        assert len(set(walked)) > 1  # the path actually trades, so the feedback of the position matters
    with pytest.raises(ValueError, match="window=10"):
        agent.greedy_targets(features[: WINDOW - 1])


def test_dqn_update_is_sb3_dqn_train_step(splits, cfg):
    """``DQNLoop``'s hand-written gradient step = SB3's ``DQN.train`` (autograd, clip_grad_norm_,
    torch Adam) on the same batches, from the same initial weights."""
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    from tradeflow.engines.builtin.agent import ObservationScaler, build_model
    from tradeflow.engines.builtin.dqn_loop import DQNLoop

    params = cfg.trademaster
    scaler = ObservationScaler.fit(splits.train[list(FEATURE_COLUMNS)].to_numpy(np.float64))
    env = make_env(splits.train, scaler, params, shaping=True)
    ours, reference = (build_model("dqn", env, params, seed=7, steps_per_epoch=len(splits.train)) for _ in range(2))
    reference.set_logger(Logger(folder=None, output_formats=[]))
    loop = DQNLoop(ours, env, seed=7)
    generator = torch.Generator().manual_seed(3)
    obs_dim, batch = loop.obs_dim, ours.batch_size
    for step in range(5):
        obs, next_obs = (torch.randn(batch, obs_dim, generator=generator) for _ in range(2))
        actions = torch.randint(3, (batch, 1), generator=generator)
        rewards = 3 * torch.randn(batch, generator=generator)  # some errors beyond the Huber knee
        dones = (torch.rand(batch, generator=generator) < 0.2).float()
        samples = ReplayBufferSamples(obs, actions, next_obs, dones.unsqueeze(1), rewards.unsqueeze(1))
        reference.replay_buffer.sample = lambda *args, samples=samples, **kwargs: samples
        reference.train(gradient_steps=1, batch_size=batch)
        with torch.no_grad():
            loop._update_batch(obs, next_obs, actions, rewards, ours.gamma * (1 - dones))
        for (name, mine), theirs in zip(ours.q_net.state_dict().items(), reference.q_net.state_dict().values()):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=f"{name} after update {step + 1}")
    state = ours.policy.optimizer.state_dict()["state"]
    assert {int(s["step"]) for s in state.values()} == {5}  # the optimizer's own state was advanced


def test_train_freq_must_be_positive():
    with pytest.raises(ValueError, match="train_freq must be >= 1; got 0"):
        BuiltinEngine(train_freq=0)


def test_build_model_takes_the_sb3_section(splits, cfg):
    """Defaults are the values the agent was tuned with (so results do not move); the section overrides them."""
    from tradeflow.engines.builtin.agent import ObservationScaler, build_model

    scaler = ObservationScaler.fit(splits.train[list(FEATURE_COLUMNS)].to_numpy(np.float64))
    env = make_env(splits.train, scaler, cfg.trademaster, shaping=True)
    rows = len(splits.train)  # 320 env steps per epoch
    dqn = build_model("dqn", env, cfg.trademaster, seed=7, steps_per_epoch=rows, sb3=cfg.sb3)
    assert (dqn.gamma, dqn.batch_size, dqn.train_freq.frequency, dqn.gradient_steps) == (0.9, 64, 4, 1)
    assert (dqn.buffer_size, dqn.learning_starts, dqn.target_update_interval) == (3 * rows, 64, rows // 10)
    ppo = build_model("ppo", env, cfg.trademaster, seed=7, steps_per_epoch=rows, sb3=cfg.sb3)
    assert (ppo.n_steps, ppo.batch_size, ppo.ent_coef) == (128, 64, 0.01)
    assert build_model("a2c", env, cfg.trademaster, seed=7, steps_per_epoch=rows, sb3=cfg.sb3).ent_coef == 0.01

    sb3 = cfg.override({"sb3": {"gamma": 0.5, "dqn_batch_size": 16, "dqn_train_freq": 2, "dqn_gradient_steps": 3,
                                "dqn_buffer_size": 100, "dqn_learning_starts": 5, "dqn_target_update_interval": 7,
                                "ppo_n_steps": 1000, "ppo_batch_size": 8, "ent_coef": 0.1}}).sb3
    dqn = build_model("dqn", env, cfg.trademaster, seed=7, steps_per_epoch=rows, sb3=sb3)
    assert (dqn.gamma, dqn.batch_size, dqn.train_freq.frequency, dqn.gradient_steps) == (0.5, 16, 2, 3)
    assert (dqn.buffer_size, dqn.learning_starts, dqn.target_update_interval) == (100, 5, 7)
    ppo = build_model("ppo", env, cfg.trademaster, seed=7, steps_per_epoch=rows, sb3=sb3)
    assert (ppo.n_steps, ppo.batch_size, ppo.ent_coef) == (rows, 8, 0.1)  # n_steps capped at the train rows
    assert build_model("dqn", env, cfg.trademaster, seed=7, steps_per_epoch=rows, sb3=sb3,
                       train_freq=1).train_freq.frequency == 1  # BuiltinEngine(train_freq=1) still wins
