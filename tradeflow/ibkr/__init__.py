"""The IBKR trading workflow: Client Portal client, risk, config, MLflow tracking and the Airflow
operators, sensors and DAG builders (``tradeflow.ibkr.airflow``). Guide: docs/ibkr_workflow.md."""
