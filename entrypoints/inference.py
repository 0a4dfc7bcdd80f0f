"""``inference``: the registered model's action on the latest bars, plus the evidence bundle.

    mlflow run . -e inference -P symbol=AAPL [-P model_uri=models:/builtin_AAPL/3]
"""

from __future__ import annotations

from tradeflow.cli import config_from_flags, fail_before_work, main_wrapper, parser
from tradeflow.errors import ConfigError

FLAGS = ("symbol", "model_uri", "data_source", "end_date", "config")


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, FLAGS).parse_args(argv)

    def step() -> None:
        from tradeflow.model import ModelNotFound, resolve_model
        from tradeflow.steps.inference import inference_layer, inference_step, training_context
        from tradeflow.runs.tracking import configure_tracking

        try:
            cfg = config_from_flags(args)
        except ConfigError as exc:
            fail_before_work(str(exc))
        configure_tracking()
        try:
            resolved = resolve_model(cfg, args.model_uri or None)
        except ModelNotFound as exc:
            fail_before_work(str(exc))
        training = training_context(resolved.training_run_id)
        try:
            cfg = config_from_flags(args, extra_layers=[inference_layer(training["config"])])
        except ConfigError as exc:
            fail_before_work(str(exc))
        inference_step(cfg, resolved, training)

    main_wrapper(step)


if __name__ == "__main__":
    from tradeflow.runs.forkserver import run_then_exit

    run_then_exit(main)  # the exit without the ~2 s teardown of torch, mlflow & co.
