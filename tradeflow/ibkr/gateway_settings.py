"""Where the IBKR gateway is and what it may do, from the environment: ``IBKR_API_URL``
(``https://localhost:5000/v1/api``), ``IBKR_VERIFY_TLS`` (default true), ``IBKR_ACCOUNT_ID``
(default: the gateway's first account) and ``IBKR_ALLOW_LIVE``. Paper accounts (``DU...``/``DF...``)
are the default; a live one needs ``broker.allow_live`` in the strategy AND ``IBKR_ALLOW_LIVE=true``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tradeflow.errors import ConfigError
from tradeflow.ibkr.errors import BrokerError
from tradeflow.settings import parse_bool

ENV_URL = "IBKR_API_URL"
ENV_VERIFY = "IBKR_VERIFY_TLS"
ENV_ACCOUNT = "IBKR_ACCOUNT_ID"
ENV_ALLOW_LIVE = "IBKR_ALLOW_LIVE"
PAPER_PREFIXES = ("DU", "DF")


def is_paper_account(account_id: str) -> bool:
    return account_id.upper().startswith(PAPER_PREFIXES)


@dataclass(frozen=True)
class GatewaySettings:
    base_url: str
    verify_tls: bool = True
    account_id: str | None = None
    timeout_s: float = 15.0
    live_allowed: bool = False  # allow_live in the strategy AND IBKR_ALLOW_LIVE in the environment

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, allow_live: bool = False,
                 timeout_s: float = 15.0) -> GatewaySettings:
        environ = os.environ if environ is None else environ
        base = (environ.get(ENV_URL) or "").strip().rstrip("/")
        if not base:
            raise BrokerError(f"{ENV_URL} is not set (e.g. https://localhost:5000/v1/api for a Client Portal gateway)")
        verify = _env_bool(environ, ENV_VERIFY, True)
        live_env = _env_bool(environ, ENV_ALLOW_LIVE, False)
        return cls(base_url=base, verify_tls=verify, account_id=(environ.get(ENV_ACCOUNT) or "").strip() or None,
                   timeout_s=timeout_s, live_allowed=allow_live and live_env)


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    try:
        return parse_bool(raw, name, blank=default)
    except ConfigError:
        raise BrokerError(f"{name}={raw!r} is not a boolean (use true or false)") from None
