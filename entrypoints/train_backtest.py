"""``train_backtest``: train an RL trading agent for one symbol, backtest it out of sample, and
leave in MLflow what a person needs to judge it, reuse the model and re-run it.

    mlflow run . -e train_backtest -P symbol=AAPL -P data_source=csv:<path> --env-manager local
"""

from __future__ import annotations

from tradeflow.steps.train_backtest import train_backtest_step
from tradeflow.cli import config_from_flags, fail_before_work, main_wrapper, parser
from tradeflow.errors import ConfigError

FLAGS = (
    "symbol", "data_source", "engine", "algorithm", "seed", "epochs", "backward_num_day",
    "forward_num_day", "max_volume", "initial_amount", "transaction_cost_pct", "future_weights",
    "explore_rate", "learning_rate", "hidden_dims", "device", "bar_size", "backtest_lookback_days",
    "end_date", "train_ratio", "valid_ratio", "register_model", "config",
)


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, FLAGS).parse_args(argv)
    try:
        cfg = config_from_flags(args)
    except ConfigError as exc:
        fail_before_work(str(exc))
    main_wrapper(lambda: train_backtest_step(cfg))


if __name__ == "__main__":
    from tradeflow.runs.forkserver import run_then_exit

    run_then_exit(main)  # the exit without the ~2 s teardown of torch, mlflow & co.
