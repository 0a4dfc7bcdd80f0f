"""The training environment: same ledger as the backtest, reward, observations, episode bounds, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from tradeflow.backtest import simulate
from tradeflow.engines.builtin.env import ObservationScaler, TradingEnv, make_observation

E0 = 1000.0


def make(prices, features=None, *, window=2, max_volume=1, cost=0.01, **kwargs) -> TradingEnv:
    prices = np.asarray(prices, dtype=float)
    if features is None:
        features = np.arange(len(prices) * 3, dtype=float).reshape(len(prices), 3)
    return TradingEnv(
        features, prices, window=window, max_volume=max_volume, initial_amount=E0, transaction_cost_pct=cost, **kwargs
    )


def random_walk(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.03, n)))


@pytest.mark.parametrize("sizing", ["equity_fraction", "units"])
def test_env_equity_is_the_backtest_ledger(sizing):
    prices = random_walk(60)
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 5, size=56)  # one per close from t=4 (first full window) to t=59
    env = make(prices, window=5, max_volume=2, position_sizing=sizing)
    env.reset(seed=0)
    rewards, equities, done, step = [], [], False, 0
    while not done:
        _, reward, done, truncated, info = env.step(actions[step])
        rewards.append(reward)
        equities.append(info["equity"])
        step += 1
    assert step == env.episode_length == 55
    table = simulate(
        prices[4:], actions - 2, initial_amount=E0, transaction_cost_pct=0.01, max_volume=2, position_sizing=sizing
    )
    np.testing.assert_allclose(equities, table["equity"].to_numpy()[1:], rtol=1e-12)
    # reward (no shaping) is the equity change in percent of the initial amount
    assert sum(rewards) == pytest.approx(100.0 * (table["equity"].iloc[-1] - E0) / E0)


def test_reward_adds_forward_shaping_from_future_prices():
    prices = [100.0, 110.0, 121.0, 133.1]
    env = make(prices, window=1, cost=0.0, forward_num_day=2, future_weights=0.5)
    env.reset()
    _, reward, *_ = env.step(2)  # long 10 units at 100
    # equity 1000 -> 1100 is 10 points; shaping 0.5 * 10 units * (121 - 100) / 1000 * 100 = 10.5
    assert reward == pytest.approx(10.0 + 10.5)
    env.step(2)  # hold: same units
    _, reward, done, *_ = env.step(2)  # at t=2 the horizon is cut at the last bar (t=3)
    assert reward == pytest.approx(10 * 12.1 / 10 + 0.5 * 10 * 12.1 / 10)
    assert done


def test_observation_is_the_feature_window_and_held_position():
    features = np.random.default_rng(0).normal(size=(8, 3))
    env = make(random_walk(8), features, window=3, max_volume=2)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, make_observation(features[0:3].astype(np.float32), 0.0))
    assert obs.shape == env.observation_space.shape == (3 * 3 + 1,)
    obs, *_ = env.step(0)  # target -2 of max 2: fully short
    np.testing.assert_array_equal(obs[:-1], features[1:4].astype(np.float32).reshape(-1))
    assert obs[-1] == -1.0
    obs, *_ = env.step(3)
    assert obs[-1] == 0.5


def test_episode_runs_from_the_first_full_window_to_the_last_bar():
    env = make(random_walk(10), window=4)
    env.reset()
    flags = [env.step(1)[2] for _ in range(env.episode_length)]
    assert flags == [False] * 5 + [True]


def test_ruin_ends_the_episode():
    env = make([100.0, 250.0, 300.0, 310.0], window=1, cost=0.0)
    env.reset()
    _, _, done, _, info = env.step(0)  # short 10 units at 100, marked at 250
    assert done and info["equity"] == pytest.approx(-500.0)


def test_env_rejects_series_too_short_for_one_step():
    with pytest.raises(ValueError, match="window=3"):
        make([100.0, 101.0, 102.0], window=3)


def test_env_passes_gymnasium_checks():
    check_env(make(random_walk(30), window=5, forward_num_day=3, future_weights=0.2), skip_render_check=True)


def test_scaler_standardises_clips_and_round_trips():
    rng = np.random.default_rng(0)
    train = np.column_stack([rng.normal(0.01, 0.05, 500), np.full(500, 0.3)])
    scaler = ObservationScaler.fit(train)
    scaled = scaler.transform(train)
    np.testing.assert_allclose(scaled[:, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(scaled[:, 0].std(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scaled[:, 1], 0.0, atol=1e-9)  # constant column: std 1, centred
    assert scaler.transform(np.array([[10.0, 0.3]]))[0, 0] == scaler.clip
    again = ObservationScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.transform(train), scaled)


def test_env_steps_fast():
    features = np.random.default_rng(0).normal(size=(3000, 11))
    env = make(random_walk(3000), features, window=10, forward_num_day=5, future_weights=0.2)
    actions = np.random.default_rng(0).integers(0, 3, env.episode_length)
    env.reset()
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    rate = len(actions) / (time.perf_counter() - start)
    assert rate > 20_000, f"{rate:.0f} steps/s"  # ~300k on a quiet core; a pandas-indexing env does ~2k
