"""A real HTTP stand-in for the trading WebUI backend, quirks included, state in memory.

It implements ``shared/contracts/webui-backend.md`` so that the client, the pipeline and the
Airflow DAG can be tested over a real socket instead of mocks. It is written from the contract,
deliberately without importing ``tradeflow.webui``: a fake that shared the client's constants
would agree with the client's bugs.

One module a concern: ``contract`` (names, columns, FastAPI's error shapes), ``faults`` (the fault
plan), ``backend`` (state and routes), ``bars`` (seeding the market-data cache), ``server`` (HTTP,
control API, seeding and inspection), ``__main__`` (the standalone CLI).

Python API (tests)::

    with WebUIServer() as server:            # 127.0.0.1, random port
        server.seed_symbol("NVDA", priority=5, conid=4815747, config={"trademaster": {"epochs": 1}})
        server.seed_market_data("AAPL", trademaster_bars(DJ30_TEST, "AAPL"), fill_volume=0)
        server.set_mode("error_then_recover", count=2, status=[502, 503])
        ... server.url, server.requests, server.artifacts(), server.auto_triggers ...
        server.stop(); server.start()        # really down (connection refused), same port

Standalone (Airflow, load tests)::

    python -m tests.support.webui --port 0 --state-file state.json
    # first stdout line: http://127.0.0.1:<port>; stop with SIGTERM / SIGINT

Fault injection over HTTP (never faulted, never logged): ``POST /__control__`` with
``{"mode": "normal" | "down" | "slow" | "error_then_recover" | "malformed", ...options}``,
``GET /__control__``, ``GET|DELETE /__control__/requests``, ``GET /__control__/triggers``,
``POST /__control__/seed`` (state-file shape), ``POST /__control__/reset``. See ``FaultPlan``.
"""

from ..data import trademaster_bars
from .contract import ARTIFACT_COLUMNS, DEFAULT_DAG_ID
from .faults import FAULT_MODES, FaultPlan
from .server import WebUIServer, webui_server

__all__ = [
    "ARTIFACT_COLUMNS",
    "DEFAULT_DAG_ID",
    "FAULT_MODES",
    "FaultPlan",
    "WebUIServer",
    "trademaster_bars",
    "webui_server",
]
