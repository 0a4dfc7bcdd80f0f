#!/bin/sh
# postgres:15 init hook: the airflow and mlflow databases, one role each (as scripts/stack.py does).
set -eu
psql -v ON_ERROR_STOP=1 -U postgres <<SQL
CREATE ROLE airflow LOGIN PASSWORD '${AIRFLOW_DB_PASSWORD}';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD '${MLFLOW_DB_PASSWORD}';
CREATE DATABASE mlflow OWNER mlflow;
SQL
