"""An MLflow ``DatasetSource`` for tradeflow's canonical source strings.

MLflow only resolves file paths and URLs on its own; ``csv:/a.csv,/b.csv``, ``backend:<url>`` or
``synthetic:AAPL?seed=42`` would be refused or, worse, recorded as the code location. This source
records the string verbatim (source type ``tradeflow_market_data``) so the MLflow UI shows where
the bars came from.
"""

from __future__ import annotations

from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources, register_dataset_source

SOURCE_TYPE = "tradeflow_market_data"
_PREFIXES = ("csv:", "backend:", "ibkr:", "yfinance:", "synthetic:")


class MarketDataSource(DatasetSource):
    """Where a ``MarketData`` came from, as its canonical source string."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return SOURCE_TYPE

    def load(self) -> Any:
        raise NotImplementedError(
            f"{self.uri}: reload market data with tradeflow.data.load_market_data(cfg); "
            "this source only records where the bars came from"
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith(_PREFIXES)

    @classmethod
    def _resolve(cls, raw_source: Any) -> MarketDataSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> MarketDataSource:
        return cls(str(source_dict["uri"]))


# Registered so ``mlflow.data.get_source(run.inputs.dataset_inputs[i].dataset)`` can rebuild it.
if MarketDataSource not in get_registered_sources():
    register_dataset_source(MarketDataSource)
