"""The upstream TradeMaster engine: its DQN trained and backtested through upstream's builders
(``engine``), our splits in upstream's dataset format (``format``), upstream's QNet as a
``TradingAgent`` (``agent``) and importing upstream itself (``compat``). Upstream is imported only
by ``engine``/``compat``, so importing this package needs nothing upstream."""
