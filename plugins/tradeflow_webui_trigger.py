"""Airflow 3 plugin: serve the WebUI backend's Airflow 2 trigger (``POST /api/v1/dags/<dag>/dagRuns``).

Put this folder on ``[core] plugins_folder`` (``AIRFLOW__CORE__PLUGINS_FOLDER=<repo>/plugins``); the
app is ``tradeflow.orchestration.webui_trigger``. On Airflow 2 the api already has that route, so the
plugin adds nothing there.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow import __version__ as _version

if int(_version.split(".", 1)[0]) < 3:  # Airflow 2: its own /api/v1 serves the request
    _APPS: list = []
else:
    from tradeflow.orchestration.webui_trigger import URL_PREFIX, create_app

    _APPS = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "tradeflow_webui_trigger"}]


class TradeflowWebUITrigger(AirflowPlugin):
    name = "tradeflow_webui_trigger"
    fastapi_apps = _APPS
