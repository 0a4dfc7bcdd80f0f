"""``IBKRHook``: a Client Portal session from an Airflow connection or the environment.

Connection ``ibkr_default`` (type http): host = the gateway base URL (``https://localhost:5000/v1/api``),
extra ``{"verify_tls": false, "account_id": "DU1234567"}``. Without that connection the hook reads
``IBKR_API_URL`` / ``IBKR_VERIFY_TLS`` / ``IBKR_ACCOUNT_ID``. Live trading still needs
``broker.allow_live`` in the strategy AND ``IBKR_ALLOW_LIVE=true``; a connection cannot enable it.
"""

from __future__ import annotations

import os
from typing import Any

from tradeflow.airflow_compat import BaseHook


class IBKRHook(BaseHook):
    conn_name_attr = "ibkr_conn_id"
    default_conn_name = "ibkr_default"
    conn_type = "http"
    hook_name = "IBKR Client Portal"

    def __init__(self, ibkr_conn_id: str = default_conn_name, *, allow_live: bool = False, timeout_s: float = 15.0) -> None:
        super().__init__()
        self.ibkr_conn_id = ibkr_conn_id
        self.allow_live = allow_live
        self.timeout_s = timeout_s

    def _environ(self) -> dict[str, str]:
        environ = dict(os.environ)
        try:
            conn = self.get_connection(self.ibkr_conn_id)
        except Exception:  # noqa: BLE001 - no such connection: the environment decides
            return environ
        url = conn.host or ""
        if url and "://" not in url:
            url = f"{conn.schema or 'https'}://{url}" + (f":{conn.port}" if conn.port else "")
        extra: dict[str, Any] = conn.extra_dejson or {}
        if url:
            environ["IBKR_API_URL"] = url
        if "verify_tls" in extra:
            environ["IBKR_VERIFY_TLS"] = str(extra["verify_tls"]).lower()
        if extra.get("account_id"):
            environ["IBKR_ACCOUNT_ID"] = str(extra["account_id"])
        return environ

    def get_conn(self):
        from tradeflow.ibkr.client import ClientPortal
        from tradeflow.ibkr.gateway_settings import GatewaySettings

        settings = GatewaySettings.from_env(self._environ(), allow_live=self.allow_live, timeout_s=self.timeout_s)
        return ClientPortal(settings)

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self.get_conn() as client:
                status = client.ensure_authenticated()
            return True, f"authenticated ({status.get('serverInfo', {}).get('serverVersion', 'gateway')})"
        except Exception as exc:  # noqa: BLE001 - reported to the UI
            return False, str(exc)
