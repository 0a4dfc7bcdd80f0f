"""Standalone fake WebUI (Airflow, load tests, benchmarks)::

    python -m tests.support.webui --port 0 --state-file state.json
    # first stdout line: http://127.0.0.1:<port>; stop with SIGTERM / SIGINT
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from .server import WebUIServer

DESCRIPTION = "A real HTTP stand-in for the trading WebUI backend, quirks included, state in memory."


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the base URL as the first stdout line."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.webui", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--state-file", type=Path, help="JSON seed (see WebUIServer.load_state); read once, never written")
    parser.add_argument("--strict-signals", action="store_true", help="422 on signals that break the TradingSignal rules")
    parser.add_argument("--health-delay", type=float, default=2.0, help="seconds /health takes (the real one is slow)")
    parser.add_argument("--airflow-url", help="post the auto-trigger here (the real service's Airflow 2 request)")
    parser.add_argument("--airflow-user", default="airflow", help="its basic-auth user")
    parser.add_argument("--airflow-password-file", type=Path, help="a file holding its basic-auth password")
    args = parser.parse_args(argv)

    auth = ((args.airflow_user, args.airflow_password_file.read_text().strip())
            if args.airflow_password_file else None)
    server = WebUIServer(args.host, args.port, strict_signals=args.strict_signals, health_delay_s=args.health_delay,
                         airflow_url=args.airflow_url, airflow_auth=auth)
    if args.state_file:
        try:
            server.load_state(json.loads(args.state_file.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            print(f"webui: cannot load {args.state_file}: {exc}", file=sys.stderr)
            return 2
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    server.start()
    print(server.url, flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
