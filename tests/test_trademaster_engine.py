"""``engine=trademaster``: upstream TradeMaster (c1c4838) behind our interface, and parity with our env.

Needs upstream installed (``bash scripts/install_trademaster.sh`` -> ``.venv-tm``); CI does not
have it, so everything but ``test_unavailable_engine_says_how_to_install`` skips there. Run with
``.venv-tm/bin/python -m pytest tests/test_trademaster_engine.py -q`` (the ``slow`` one runs
``mlflow run . -e train_backtest -P engine=trademaster`` and ``-e inference`` through the real CLI).

Parity: on upstream's own BTC test.csv and the same long-only/flat decisions, upstream's
``AlgorithmicTradingEnvironment`` and our ``TradingEnv(position_sizing="units")`` mark the same
portfolio values: exactly without fees, and with fees up to upstream's buy-fee convention
(``c/(1-c)`` of the notional instead of ``c``), reconciled to the cent. Shorts differ by design:
``test_short_side_difference`` pins the numbers quoted in docs/trademaster_engine.md.
"""

from __future__ import annotations

import io
import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import BTC_CSV, SHARED_DATA, require_shared_data
from tradeflow.backtest import simulate
from tradeflow.config import TradeMasterParams, resolve_config
from tradeflow.engines import EngineUnavailable, get_engine
from tradeflow.engines.base import Engine
from tradeflow.engines.trademaster.compat import INSTALL_COMMAND, import_trademaster, unavailable_reason
from tradeflow.features import FEATURE_COLUMNS

pytestmark = pytest.mark.trademaster

BTC_DIR = SHARED_DATA / "algorithmic_trading" / "BTC"
BTC_TEST = BTC_DIR / "test.csv"
E0 = 100_000.0


@pytest.fixture(scope="module")
def upstream():
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"upstream TradeMaster is not importable ({reason}); CI does not install it. "
                    f"To run these tests: {INSTALL_COMMAND}, then "
                    ".venv-tm/bin/python -m pytest tests/test_trademaster_engine.py")
    require_shared_data()
    upstream = import_trademaster()
    assert upstream.provenance.implementation == "upstream", upstream.provenance.label  # the installed tree verified
    return upstream


def test_unavailable_engine_says_how_to_install():
    if unavailable_reason() is None:
        pytest.skip("upstream TradeMaster is installed here; this checks the message where it is not")
    with pytest.raises(EngineUnavailable) as caught:
        get_engine("trademaster")
    message = str(caught.value)
    assert "\n" not in message and INSTALL_COMMAND in message and "c1c4838b518a" in message


# --- shims ----------------------------------------------------------------------------------------


def test_import_shims(upstream, tmp_path):
    import torch

    assert logging.root.manager.disable == logging.NOTSET  # upstream's logging.disable(WARNING) undone
    ray = sys.modules.get("ray")
    assert ray is None or not getattr(ray, "__tradeflow_stand_in__", False)  # stand-in not left behind
    if int(np.__version__.split(".")[0]) >= 2:
        assert upstream.numpy_patched and upstream.environment_module.np.nan_to_num(np.float64("nan"), 0) == 0.0
    assert sys.modules["numpy"].nan_to_num is np.nan_to_num  # the real numpy is untouched
    torch.save({"epoch": np.argmax([0.1, 0.3]) + 1}, tmp_path / "best.pth")  # what upstream saves
    assert torch.load(tmp_path / "best.pth")["epoch"] == 2  # weights_only default admits numpy scalars


# --- parity with our environment ------------------------------------------------------------------


def _upstream_episode(upstream, params: TradeMasterParams, actions) -> object:
    """Upstream's env (built by its own builders over the shared CSV), stepped with ``actions``
    (upstream's encoding: a - max_volume units added); returns the finished env."""
    from tradeflow.engines.trademaster.compat import upstream_quiet_stdout
    from tradeflow.engines.trademaster.engine import build_environment

    with upstream_quiet_stdout(io.StringIO()):
        env = build_environment(upstream, BTC_TEST, params, task="test")
        assert (env.initial_amount, env.transaction_cost_pct, env.max_volume) == (
            params.initial_amount, params.transaction_cost_pct, params.max_volume)  # read as dataset attributes
        env.reset()
        done, step = False, 0
        while not done:
            _, _, done, _ = env.step(np.int64(actions[min(step, len(actions) - 1)]))
            step += 1
    return env


def _long_flat_targets(n: int, max_volume: int, seed: int) -> np.ndarray:
    """A random long-only/flat target path in 0..max_volume (each change within one step's reach)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, max_volume + 1, size=n)


@pytest.mark.parametrize("cost", [0.0, 0.001])
@pytest.mark.parametrize(("window", "max_volume"), [(5, 1), (10, 3)])
def test_long_flat_portfolio_values_match_builtin_env(upstream, cost, window, max_volume):
    from tradeflow.engines.builtin.env import TradingEnv

    frame = pd.read_csv(BTC_TEST, index_col=0)
    prices = frame["close"].to_numpy(np.float64)
    params = TradeMasterParams(backward_num_day=window, forward_num_day=5, max_volume=max_volume,
                               initial_amount=E0, transaction_cost_pct=cost)
    targets = _long_flat_targets(len(frame), max_volume, seed=window)
    deltas = np.diff(targets, prepend=0)
    env = _upstream_episode(upstream, params, deltas + max_volume)
    theirs = np.asarray(env.asset_memory, dtype=np.float64)
    n = len(theirs)
    assert n == len(frame) - 5 - 1 - window + 1  # upstream stops forward_num_day + 1 bars early
    np.testing.assert_array_equal(np.asarray(env.compound_memory)[1:, 1], targets[: n - 1])  # it held our path

    ours_env = TradingEnv(frame[list(FEATURE_COLUMNS)].to_numpy(np.float64), prices, window=window,
                          max_volume=max_volume, initial_amount=E0, transaction_cost_pct=cost,
                          position_sizing="units")
    ours_env.reset(seed=0)
    ours = [E0]
    for target in targets[: n - 1]:
        _, _, done, _, info = ours_env.step(int(target) + max_volume)
        ours.append(info["equity"])
        assert not done
    ours = np.asarray(ours)
    ledger = simulate(prices[window - 1 : window - 1 + n], targets[:n], initial_amount=E0,
                      transaction_cost_pct=cost, max_volume=max_volume, position_sizing="units")
    np.testing.assert_allclose(ledger["equity"].to_numpy(), ours, rtol=1e-12)  # our env == our backtest

    if cost == 0.0:
        np.testing.assert_allclose(theirs, ours, rtol=1e-12, atol=1e-8)
    else:
        # upstream charges a buy price * c / (1 - c) per unit, we charge price * c; sells agree
        bought = np.clip(deltas[: n - 1], 0, None)
        extra = np.cumsum(bought * prices[window - 1 : window - 2 + n] * (cost / (1 - cost) - cost))
        np.testing.assert_allclose(theirs[1:], ours[1:] - extra, rtol=1e-12, atol=1e-6)
        np.testing.assert_allclose(theirs, ours, rtol=1e-4)  # a few dollars on 1e5 over 400 days


def test_short_side_difference(upstream):
    """Always SELL on BTC's test split (2018-04-07..2019-05-26, BTC 6911 -> 8673): upstream debits
    cash for every short sale like a purchase and marks the short at -units * price, so it loses
    more than the account (-212%) with 13 units short; the same 13-unit path marked to market loses 13.8%;
    our env's "always short" (target -1, held) loses 1.8%."""
    from tradeflow.engines.builtin.env import TradingEnv

    frame = pd.read_csv(BTC_TEST, index_col=0)
    prices = frame["close"].to_numpy(np.float64)
    window = 5
    params = TradeMasterParams(backward_num_day=window, forward_num_day=5, max_volume=1, initial_amount=E0,
                               transaction_cost_pct=0.001)
    env = _upstream_episode(upstream, params, [0])  # action 0 = sell one unit, every step
    equity = np.asarray(env.asset_memory)
    units = np.asarray(env.compound_memory)[1:, 1]
    n = len(equity)
    upstream_return = equity[-1] / E0 - 1
    assert upstream_return == pytest.approx(-2.1188, abs=5e-4)
    assert units[-1] == -13  # short sales stop once "unaffordable": cash went to buy them

    same_units = simulate(prices[window - 1 : window - 1 + n], np.append(units, units[-1]), initial_amount=E0,
                          transaction_cost_pct=0.001, max_volume=1, position_sizing="units")
    marked_return = same_units["equity"].iloc[-1] / E0 - 1
    assert marked_return == pytest.approx(-0.1382, abs=5e-4)

    ours_env = TradingEnv(frame[list(FEATURE_COLUMNS)].to_numpy(np.float64), prices, window=window, max_volume=1,
                          initial_amount=E0, transaction_cost_pct=0.001, position_sizing="units")
    ours_env.reset(seed=0)
    ours = [E0]
    for _ in range(n - 1):
        ours.append(ours_env.step(0)[4]["equity"])
    ours_return = ours[-1] / E0 - 1
    assert ours_return == pytest.approx(-0.0177, abs=5e-4)
    print(f"\nalways-SELL, BTC test split ({n - 1} steps, "
          f"BTC {prices[window - 1]:.0f} -> {prices[window - 2 + n]:.0f}): "
          f"upstream {upstream_return:+.2%} ({units[-1]:.0f} units), same units marked to market "
          f"{marked_return:+.2%}, ours target -1 {ours_return:+.2%}")


def test_agent_state_is_upstream_observation(upstream):
    """``TradeMasterAgent.upstream_state`` from our (window, features) block == upstream's env state."""
    from tradeflow.engines.trademaster.compat import upstream_quiet_stdout
    from tradeflow.engines.trademaster.engine import TradeMasterAgent, build_environment

    frame = pd.read_csv(BTC_TEST, index_col=0)
    params = TradeMasterParams(backward_num_day=7, max_volume=2)
    with upstream_quiet_stdout(io.StringIO()):
        env = build_environment(upstream, BTC_TEST, params, task="test")
        qnet = upstream.build_net({"type": "QNet", "dims": (16,), "state_dim": env.state_dim,
                                   "action_dim": env.action_dim, "explore_rate": 0.25})
    agent = TradeMasterAgent(qnet, window=7, max_volume=2, feature_columns=FEATURE_COLUMNS, initial_amount=E0,
                             transaction_cost_pct=0.001, forward_num_day=5, future_weights=0.2, hidden_dims=(16,),
                             explore_rate=0.25)
    state = env.reset()
    features = frame[list(FEATURE_COLUMNS)].to_numpy(np.float64)
    np.testing.assert_array_equal(agent.upstream_state(features[:7], cash=E0, units=0), state)
    with upstream_quiet_stdout(io.StringIO()):
        for action in (4, 3, 0):  # +2, +1, -2 units
            state, _, _, _ = env.step(np.int64(action))
    cash, units = env.compound_memory[-1]
    assert units == 1
    np.testing.assert_array_equal(agent.upstream_state(features[3:10], cash=cash, units=units), state)
    result = agent.act(features[3:10], position=units / 2, cash=cash)
    q = agent.q_values(state)
    assert result.action == int(np.clip(units + np.argmax(q) - 2, -2, 2))
    assert set(result.scores) == {-1, 0, 1, 2}  # target -2 is out of one step's reach from +1


# --- a real upstream training through the adapter -------------------------------------------------


def _btc_splits(cfg):
    from tradeflow.data import load_market_data
    from tradeflow.features import compute_features, split_for_run

    return split_for_run(compute_features(load_market_data(cfg).bars), cfg)


def test_trains_upstream_dqn_on_btc_and_round_trips(upstream, tmp_path):
    import torch

    cfg = resolve_config({"symbol": "BTC", "data_source": f"csv:{BTC_CSV}", "engine": "trademaster", "epochs": 2,
                          "seed": 7})
    splits = _btc_splits(cfg)
    engine = get_engine("trademaster")
    updates: list[dict] = []
    threads = torch.get_num_threads()
    result = engine.train(splits, cfg, progress=updates.append, workdir=tmp_path)
    # upstream leaves grad disabled and 1 thread set; the adapter restores the process's torch state
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads

    assert [row["epoch"] for row in result.learning_curve] == [1, 2] and len(updates) == 2
    valid = [row["valid_total_return"] for row in result.learning_curve]
    assert result.best_epoch == int(np.argmax(valid)) + 1  # upstream's own choice (read from best.pth)
    episode = len(splits.train) - cfg.trademaster.forward_num_day - cfg.trademaster.backward_num_day - 1
    assert result.timesteps >= 2 * episode and result.env_steps_per_s > 0
    assert all(np.isfinite(v) for v in result.extra_metrics.values())
    work = tmp_path / "trademaster"
    assert (work / "work_dir" / "checkpoints" / "best.pth").is_file()  # upstream's trainer wrote its files
    assert (work / "work_dir" / "test_result.csv").is_file()
    header = pd.read_csv(work / "data" / "train.csv", index_col=0, nrows=1)
    assert list(header.columns) == ["tic", "date", "open", "high", "low", "close", "adjcp", *FEATURE_COLUMNS]

    # upstream's own env replay on the test split reproduces upstream's trainer.test() numbers
    test = engine.upstream_backtest(result.agent, splits.test, cfg)
    for key in ("total_return", "sharpe", "max_drawdown"):
        assert test.metrics[key] == pytest.approx(result.extra_metrics[f"upstream_test_{key}"], rel=1e-12)
    upstream_csv = pd.read_csv(work / "work_dir" / "test_result.csv")
    np.testing.assert_allclose(test.table["equity"].to_numpy(), upstream_csv["total assets"].to_numpy(), rtol=1e-12)
    assert list(test.table.columns) == ["date", "price", "action", "position", "units", "cash", "equity",
                                        "benchmark", "drawdown", "trade", "cost"]
    assert test.table["equity"].iloc[0] == E0
    assert test.table["date"].iloc[0] == splits.test["date"].iloc[cfg.trademaster.backward_num_day - 1]

    # self-contained save/load; act() on our observation layout
    saved = tmp_path / "saved"
    result.agent.save(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["agent.json", "qnet.pth"]
    meta = json.loads((saved / "agent.json").read_text())
    assert meta["engine"] == "trademaster" and meta["upstream"]["commit"].startswith("c1c4838b518a")
    loaded = engine.load_agent(saved)
    window = splits.test[list(FEATURE_COLUMNS)].to_numpy(np.float64)[-cfg.trademaster.backward_num_day:]
    for position in (-1.0, 0.0, 1.0):
        a, b = result.agent.act(window, position), loaded.act(window, position)
        assert a == b and -1 <= a.action <= 1 and a.scores[a.action] == max(a.scores.values())
    again = engine.upstream_backtest(loaded, splits.test, cfg)
    pd.testing.assert_frame_equal(again.table, test.table)

    # the pipeline's backtest: the same bars and ledger as every engine (to the last bar, same benchmark)
    shared = engine.backtest(result.agent, splits.test, cfg)
    other = Engine.backtest(engine, _always_long(result.agent), splits.test, cfg)
    assert list(shared.table["date"]) == list(other.table["date"])
    assert len(shared.table) == len(test.table) + cfg.trademaster.forward_num_day + 1  # upstream stops early
    assert shared.metrics["benchmark_total_return"] == other.metrics["benchmark_total_return"]
    replay = simulate(shared.table["price"].to_numpy(), shared.table["action"].to_numpy(), initial_amount=E0,
                      transaction_cost_pct=cfg.trademaster.transaction_cost_pct, max_volume=1, position_sizing="units")
    np.testing.assert_allclose(replay["equity"].to_numpy(), shared.table["equity"].to_numpy(), rtol=1e-12)
    assert shared.table["equity"].iloc[0] == test.table["equity"].iloc[0] == E0


class _always_long:
    """A stand-in agent for ``Engine.backtest``'s bars (always long one unit)."""

    def __init__(self, agent):
        self.window, self.max_volume, self.feature_columns = agent.window, agent.max_volume, agent.feature_columns

    def greedy_targets(self, features):
        return [self.max_volume] * (len(features) - self.window + 1)


def test_training_is_reproducible(upstream, tmp_path):
    cfg = resolve_config({"symbol": "BTC", "data_source": f"csv:{BTC_CSV}", "engine": "trademaster", "epochs": 1,
                          "seed": 3, "backtest_lookback_days": 500})
    splits = _btc_splits(cfg)
    engine = get_engine("trademaster")
    first = engine.train(splits, cfg, workdir=tmp_path / "a")
    second = engine.train(splits, cfg, workdir=tmp_path / "b")
    strip = [{k: v for k, v in row.items() if k != "steps_per_s"} for row in first.learning_curve]
    assert strip == [{k: v for k, v in row.items() if k != "steps_per_s"} for row in second.learning_curve]
    assert first.extra_metrics == second.extra_metrics


# --- end to end through the real `mlflow run` CLI -------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_train_backtest_and_inference_with_upstream(upstream, tracking_store):
    """``mlflow run . -e train_backtest -P engine=trademaster`` logs and registers the upstream agent;
    ``-e inference`` then serves it through the pyfunc (both in this interpreter's venv, .venv-tm)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tests.conftest import mlflow_run

    source = f"csv:{BTC_CSV}"
    result = mlflow_run("train_backtest", {"symbol": "BTC", "engine": "trademaster", "data_source": source,
                                           "epochs": "1", "backtest_lookback_days": "900"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BTC: test total return" in result.stdout
    client = MlflowClient()
    experiment = client.get_experiment_by_name("trademaster_autogen").experiment_id
    run = client.search_runs(experiment, filter_string="tags.`tradeflow.stage` = 'train_backtest'")[0]
    assert run.info.status == "FINISHED" and run.data.params["cfg.engine"] == "trademaster"
    metrics = run.data.metrics
    for key in ("test_total_return", "test_sharpe", "test_max_drawdown", "upstream_test_total_return",
                "best_valid_total_return", "env_steps_per_s"):
        assert np.isfinite(metrics[key]), key
    (version,) = client.search_model_versions("name='trademaster_BTC'")  # champion only if it passed the gate
    assert version.tags["engine"] == "trademaster"
    agent_dir = mlflow.artifacts.download_artifacts(f"models:/trademaster_BTC/{version.version}")
    meta = json.loads(open(f"{agent_dir}/artifacts/agent/agent.json").read())
    assert meta["engine"] == "trademaster" and meta["upstream"]["commit"].startswith("c1c4838b518a")
    # what produced it, measured: the installed package verified against the digest manifest
    assert version.tags["implementation"] == "upstream" and run.data.tags["tradeflow.engine_implementation"].startswith(
        "upstream TradeMaster-NTU/TradeMaster@c1c4838b518a")
    model_meta = json.loads(open(f"{agent_dir}/artifacts/agent/agent_meta.json").read())
    assert model_meta["provenance"]["implementation"] == "upstream" and model_meta["provenance"]["verified"]
    assert "upstream dqn 1 ep" in run.data.tags["mlflow.runName"]

    # inference serves the engine it is asked for: trademaster_BTC, never a builtin_BTC
    served = mlflow_run("inference", {"symbol": "BTC", "data_source": source, "config": '{"engine": "trademaster"}'})
    assert served.returncode == 0, served.stderr[-3000:]
    assert "models:/trademaster_BTC/" in served.stdout and "suggests" in served.stdout
    builtin = mlflow_run("inference", {"symbol": "BTC", "data_source": source})
    assert builtin.returncode != 0 and "no registered model builtin_BTC@champion" in builtin.stderr
