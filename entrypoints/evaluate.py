"""``evaluate``: walk-forward evaluation of the pipeline's decisions over a universe of symbols.

    mlflow run . -e evaluate -P symbols=AAPL,MSFT,JPM -P data_source=csv:<path>[,<path>] --env-manager local

``symbols`` empty = every symbol in the data. With neither ``symbols`` nor ``data_source`` given, the
default set spans regimes: the 29 DJ30 stocks in ``../shared`` (TradeMaster's dj30 2020-2021) and
BTC 2014-2021 (TradeMaster's BTC.csv from 2014-01-01), each summarised on its own. See
docs/evaluation.md.
"""

from __future__ import annotations


from tradeflow.cli import config_from_flags, fail_before_work, main_wrapper, parser
from tradeflow.errors import ConfigError
from tradeflow.names import PROJECT_ROOT

#: the default universe: TradeMaster's dj30 files beside the project (29 Dow stocks, 2020-2021)
DJ30_DIR = PROJECT_ROOT.parent / "shared" / "data" / "trademaster" / "portfolio_management" / "dj30"
DEFAULT_DATA_SOURCE = f"csv:{DJ30_DIR / 'valid.csv'},{DJ30_DIR / 'test.csv'}"
BTC_SOURCE = f"csv:{PROJECT_ROOT.parent / 'shared' / 'data' / 'trademaster' / 'algorithmic_trading' / 'BTC' / 'BTC.csv'}"
#: the default set: (name, data source, start_date); every symbol each source holds
DEFAULT_SETS = (("dj30", DEFAULT_DATA_SOURCE, ""), ("btc_2014_2021", BTC_SOURCE, "2014-01-01"))

SPEC_FLAGS = ("symbols", "algorithms", "min_train", "window", "step", "horizon", "refit_every", "random_seeds",
              "start_date")
FLAGS = (*SPEC_FLAGS, "data_source", "engine", "seed", "epochs", "reviewer", "review_model", "end_date",
         "do_no_harm_gate", "position_mode", "config")


#: A list parameter longer than this is refused (``random_seeds`` of 10**6 entries would run 10**6
#: random policies per window); seeds are the config's seed range.
MAX_LIST_ITEMS = 32


def _ints(text: str, name: str) -> tuple[int, ...]:
    if len(text) > 4096:
        raise ConfigError(f"invalid parameter '{name}': {len(text):,} characters (over 4,096)")
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"invalid parameter '{name}': {text[:60]!r} is not a comma-separated list of integers") from None
    if len(values) > MAX_LIST_ITEMS:
        raise ConfigError(f"invalid parameter '{name}': {len(values)} values, over the cap of {MAX_LIST_ITEMS}")
    if any(not 0 <= v <= 2**31 - 1 for v in values):
        raise ConfigError(f"invalid parameter '{name}': every value must be in 0..2**31-1")
    return values


def spec_from_flags(args):
    """``WalkForwardSpec`` from the flags ("" keeps the default); raises ``ConfigError``."""
    from tradeflow.evaluation import WalkForwardSpec

    values: dict = {}
    for name in ("min_train", "window", "step", "horizon", "refit_every"):
        text = getattr(args, name).strip()
        if text:
            number = _ints(text, name)
            if len(number) != 1:
                raise ConfigError(f"invalid parameter '{name}': {text!r} is not one integer")
            values[name] = number[0]
    if args.algorithms.strip():
        values["algorithms"] = tuple(a.strip().lower() for a in args.algorithms.split(",") if a.strip())
    if args.random_seeds.strip():
        values["random_seeds"] = _ints(args.random_seeds, "random_seeds")
    if args.start_date.strip():
        values["start_date"] = args.start_date.strip()
    return WalkForwardSpec(**values)


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, FLAGS).parse_args(argv)

    def step() -> None:
        from dataclasses import replace

        from tradeflow.evaluation.step import evaluate_sets, evaluate_step
        from tradeflow.settings import env_layer
        from tradeflow.evaluation.universe import parse_symbols, universe_symbols

        if not args.symbols.strip() and not args.data_source.strip() and "data_source" not in env_layer():
            try:  # the default set: each universe validated before any work
                spec = spec_from_flags(args)
                sets = []
                for name, source, start in DEFAULT_SETS:
                    probe = config_from_flags(args, extra_layers=[{"data_source": source, "symbol": "UNIVERSE"}])
                    sets.append((name, probe, universe_symbols(source), replace(spec, start_date=spec.start_date or start)))
            except ConfigError as exc:
                fail_before_work(str(exc))
            evaluate_sets(sets)
            return

        try:
            spec = spec_from_flags(args)
            default_source = {} if "data_source" in env_layer() else {"data_source": DEFAULT_DATA_SOURCE}
            symbols = parse_symbols(args.symbols)
            probe = config_from_flags(args, extra_layers=[default_source, {"symbol": symbols[0] if symbols else "UNIVERSE"}])
            if not symbols:
                symbols = universe_symbols(probe.data_source)
            if not symbols:
                raise ConfigError(f"evaluate: no symbols found in {probe.data_source}")
            for symbol in symbols:  # every symbol is validated before any work
                probe.override({"symbol": symbol})
        except ConfigError as exc:
            fail_before_work(str(exc))
        evaluate_step(probe, symbols, spec)

    main_wrapper(step)


if __name__ == "__main__":
    from tradeflow.runs.forkserver import run_then_exit

    run_then_exit(main)  # the exit without the ~2 s teardown of torch, mlflow & co.
