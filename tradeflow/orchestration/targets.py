"""Task ``resolve_targets``: which symbols one DAG run runs (XCom: small dicts, ids only)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tradeflow.config import MAX_SYMBOLS
from tradeflow.names import SYMBOL_PATTERN
from tradeflow.orchestration.context import RunContext, check_conf, fail_now
from tradeflow.settings import parse_bool

log = logging.getLogger(__name__)


def resolve_targets(ctx: RunContext, *, environ: Mapping[str, str] | None = None,
                    now: datetime | None = None) -> list[dict[str, Any]]:
    """The symbols of this DAG run, as small dicts (XCom): symbol, link_config, conid,
    workflow_symbol_id, priority. Raises ``WebUIError`` when the backend cannot be reached.

    - A WebUI auto-trigger (``workflow_symbol_id`` in conf) runs only if that symbol is enabled and
      its link to this DAG active; else the batch is empty and the log says why (the service fires
      the trigger even for a disabled symbol or an inactive link).
    - A person's ``conf.symbol`` always runs; a disabled symbol or inactive link is said, not obeyed.
    - A scheduled batch skips, and names, each symbol outside its link's session (timezone,
      session_start/end, allow_weekend); ``force`` runs them all. ``now`` is for tests.
    """
    from tradeflow.sessions import Session, SessionError
    from tradeflow.webui import WebUIClient

    check_conf(ctx.conf)  # unknown keys and a batch-wide config.symbol fail before any request
    env = os.environ if environ is None else environ
    client = WebUIClient.from_env(env)
    raw_symbol = ctx.get("symbol")
    if raw_symbol is not None and not isinstance(raw_symbol, str):
        fail_now(f"conf.symbol must be a string, got {type(raw_symbol).__name__}")
    if raw_symbol and (not raw_symbol.strip(" ").isascii() or raw_symbol.strip(" ") != raw_symbol.strip()):
        fail_now(f"conf.symbol {raw_symbol[:30]!r} is not plain ASCII on one line (look-alikes are refused)")
    symbol = (raw_symbol or "").strip().upper()
    if symbol:
        if not re.fullmatch(SYMBOL_PATTERN, symbol) or not re.search(r"[A-Z0-9]", symbol):
            fail_now(f"conf.symbol {symbol!r} does not match {SYMBOL_PATTERN} with at least one letter or digit")
        return _single_target(ctx, symbol, client)

    if client is None:
        fail_now("no conf.symbol and BACKEND_API_URL is not set: there is no list of assigned symbols. "
                  'Trigger with {"symbol": "AAPL"} or configure the WebUI backend.')
    max_symbols = ctx.get_int("max_symbols", MAX_SYMBOLS)
    max_symbols = max(1, min(max_symbols, MAX_SYMBOLS))
    excluded: list[tuple[str, str]] = []
    with client:
        assigned = client.assigned_symbols(ctx.dag_id, max_symbols=max_symbols, excluded=excluded)
    force = parse_bool(ctx.get("force", False), "force")
    scheduled = ctx.run_id.startswith("scheduled__")
    moment = now or datetime.now(UTC)
    targets = []
    for row in assigned:
        name = str(row["symbol"]).strip().upper()
        try:
            why = Session.from_link(row, where=f"WebUI link of {name}").outside(moment)
        except SessionError as exc:
            log.error("%s skipped: %s", name, exc)
            excluded.append((name, f"bad session in its WebUI link: {exc}"))
            continue
        if why and scheduled and not force:
            log.warning("%s skipped: %s (scheduled run; trigger with force=true to run it anyway)", name, why)
            excluded.append((name, f"{why} (scheduled run; force=true runs it)"))
            continue
        if why:
            log.info("%s runs although %s (%s)", name, why, "force" if force else "manual run")
        targets.append({"symbol": name, "link_config": row.get("config") or {},
                        "conid": row.get("conid"), "workflow_symbol_id": row.get("workflow_symbol_id"),
                        "priority": row.get("priority")})
    if excluded:
        log.warning("excluded from this batch (%d): %s", len(excluded),
                    "; ".join(f"{symbol}: {why}" for symbol, why in excluded))
    if not targets:
        log.warning("empty batch: no enabled symbol has an active link to %s in the WebUI (Workflow Symbols)"
                    "%s; nothing to run", ctx.dag_id, " inside its session" if assigned else "")
    else:
        log.info("batch of %d symbol(s) (max_symbols=%d): %s", len(targets), max_symbols,
                 ", ".join(t["symbol"] for t in targets))
    return targets


def _single_target(ctx: RunContext, symbol: str, client: Any) -> list[dict[str, Any]]:
    """``conf.symbol``: a WebUI auto-trigger is checked against the WebUI; a person's run is not."""
    symbol_id = ctx.get("workflow_symbol_id")
    if symbol_id is not None and (isinstance(symbol_id, bool) or not isinstance(symbol_id, int)):
        fail_now(f"conf.workflow_symbol_id must be an integer, got {symbol_id!r}")
    triggered = symbol_id is not None
    row = None
    if client is not None:
        with client:
            row = client.get_workflow_symbol(symbol)
    elif triggered:
        fail_now(f"conf.workflow_symbol_id={symbol_id} says the WebUI triggered this run, but BACKEND_API_URL is "
                  f"not set: cannot check that {symbol} is enabled there")
    else:
        log.info("BACKEND_API_URL is not set: %s runs without a WebUI link config", symbol)
    links = [link for link in (row or {}).get("workflows") or [] if link.get("dag_id") == ctx.dag_id]
    link = next((link for link in links if link.get("is_active") is True), links[0] if links else None)
    problems = []
    if client is not None and row is None:
        problems.append(f"{symbol} is not configured in the WebUI")
    elif row is not None:
        if triggered and row.get("id") != symbol_id:
            fail_now(f"conf.workflow_symbol_id={symbol_id} is not {symbol}'s id in the WebUI ({row.get('id')})")
        if row.get("enabled") is not True:
            problems.append(f"{symbol} is disabled in the WebUI")
        if link is None:
            problems.append(f"{symbol} has no link to {ctx.dag_id} in the WebUI")
        elif link.get("is_active") is not True:
            problems.append(f"{symbol}'s link to {ctx.dag_id} is inactive in the WebUI")
    if problems and triggered:
        log.warning("WebUI auto-trigger for %s not run: %s. Nothing to do (the service triggers even disabled "
                    "symbols and inactive links).", symbol, "; ".join(problems))
        return []
    if problems:
        log.warning("%s; running it anyway because conf.symbol asked for it", "; ".join(problems))
    link_config = None if link is None else (link.get("config") if link.get("config") is not None else {})
    if client is not None and link is None:
        log.info("%s has no link to %s in the WebUI: running it with defaults < env < conf", symbol, ctx.dag_id)
    log.info("single-symbol run: %s", symbol)
    return [{"symbol": symbol, "link_config": link_config, "conid": ctx.get("conid"),
             "workflow_symbol_id": symbol_id, "priority": None}]
