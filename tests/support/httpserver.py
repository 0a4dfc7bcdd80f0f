"""One base for the in-process HTTP test doubles (WebUI, IBKR gateway, OpenAI, Databricks).

The lifecycle (bind on loopback without a reverse DNS lookup, serve on a daemon thread, ``stop()``
that really refuses connections, ``start()`` again on the same port, context manager) and the
request plumbing (method dispatch, query, body, JSON answers, a client that hung up) are written
once here; a double only implements ``handle(request) -> Reply | None`` (``None``: close the
connection without a byte, a dropped connection).

    class Echo(BackgroundHTTPServer):
        name = "echo"
        def handle(self, request):
            return Reply(200, {"path": request.path, "query": request.query})

    with Echo() as server:
        requests.get(server.url + "/x?a=1")
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

__all__ = ["BackgroundHTTPServer", "Reply", "Request"]


@dataclass
class Request:
    """One parsed request: the query keeps the last value of a repeated key."""

    method: str
    path: str
    query: dict[str, str]
    raw: bytes
    headers: Mapping[str, str]

    def json(self, empty: Any = None) -> Any:
        """The body as JSON (``empty`` when there is none); ``ValueError`` when it is not JSON."""
        return json.loads(self.raw) if self.raw else empty


@dataclass
class Reply:
    """One HTTP answer; ``body`` is JSON-encoded unless it is already ``bytes``."""

    status: int
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


class _Listener(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping (a "slow" fault) never blocks stop()
    app: BackgroundHTTPServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 (one request per connection) so that ``stop()`` really cuts every client off."""

    server: _Listener

    def version_string(self) -> str:
        return self.server.app.server_header or super().version_string()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug(f"{self.server.app.name}: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = self.server.app.handle(Request(method, parts.path, query, raw, self.headers))
        if reply is not None:
            self._write(reply)
        # None: return without a byte; the socket closes and the client sees a dropped connection

    def _write(self, reply: Reply) -> None:
        payload = reply.payload()
        try:
            self.send_response(reply.status, reply.reason)
            if payload or reply.status not in {204, 307}:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left; any state change stands


class BackgroundHTTPServer:
    """A loopback HTTP server on a daemon thread; subclasses implement ``handle``."""

    name = "http-server"
    #: The ``Server:`` header (``None``: http.server's own).
    server_header: str | None = None

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._httpd: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._life = threading.Lock()

    def handle(self, request: Request) -> Reply | None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self):
        """Listen (again): the first start picks the port, later starts reuse it."""
        with self._life:
            if self._httpd is None:
                httpd = _Listener((self.host, self.port), _Handler)
                httpd.app = self
                self.port = httpd.server_address[1]
                self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                                name=f"{self.name}-{self.port}", daemon=True)
                self._httpd = httpd
                self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener: new connections are refused until ``start()``. State is kept."""
        with self._life:
            httpd, self._httpd = self._httpd, None
            if httpd is not None:
                httpd.shutdown()
                httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
