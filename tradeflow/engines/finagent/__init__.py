"""The upstream FinAgent engine: its rule calibrated (``engine``), the rule as numbers (``rule``),
running upstream's analysis on our bars (``analyst``), the agent and its review evidence
(``agent``) and importing upstream itself (``compat``). Importing this package needs nothing
upstream."""
