"""The test kit: real servers, fakes of the external services and the load/fault harness that the
tests and the benchmarks run the system with.

Self-contained on purpose: its modules import each other relatively and never import the test
suite (``tests.*`` outside this folder, ``conftest``), so ``bench/`` loads this folder by file path
as the package ``testkit`` (``bench/_common.py``) without importing the ``tests`` package.

- ``data``: where the data is (../shared, the shipped slice), TradeMaster CSV -> bars;
- ``httpserver``: the one background HTTP server base of the in-process fakes;
- ``webui/`` (the WebUI backend), ``ibkr_gateway`` + ``ibkr_paper`` (IBKR Client Portal),
  ``openai_server``, ``fake_databricks``, ``hostile_server`` (misbehaving below HTTP);
- ``servers/``: real PostgreSQL and ``mlflow server`` processes (one process lifecycle);
- ``airflow_env``: a throwaway Airflow (home, ``dags test``, services, the DAG suites' stack);
- ``load/``: background DAG runs, kills, peak memory, audits, the orchestration driver CLI.
"""
