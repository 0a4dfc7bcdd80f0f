"""Airflow 3 hooks, operators, sensors and DAG builders of the IBKR workflow."""
