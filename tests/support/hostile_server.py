"""A hostile HTTP server on 127.0.0.1 for the clients' limits: it trickles, floods or lies.

Raw sockets (not ``http.server``) so it can misbehave below HTTP: send headers a byte at a time,
declare or stream a body far over any sane size, or answer well-formed JSON of the wrong shape.

- ``trickle``: status line and headers one byte every ``interval_s`` (never finishing in time);
- ``trickle_body``: proper headers, then the JSON body one byte every ``interval_s``;
- ``flood``: 200 with ``size`` bytes of JSON (``Content-Length`` declared) in 1 MiB writes;
- ``flood_chunked``: the same without ``Content-Length`` (chunked), so only counting catches it;
- ``json``: 200 with ``body`` (any JSON-able value, or bytes as given).

Every connection is served on its own daemon thread and ends when the client goes away.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any


class HostileServer:
    def __init__(self, mode: str, *, body: Any = None, size: int = 50 * 1024 * 1024, interval_s: float = 1.0):
        if mode not in {"trickle", "trickle_body", "flood", "flood_chunked", "json"}:
            raise ValueError(f"unknown hostile mode {mode!r}")
        self.mode, self.body, self.size, self.interval_s = mode, body, size, interval_s
        self.requests: list[str] = []
        self.bytes_sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    @property
    def open_connections(self) -> int:
        return sum(thread.is_alive() for thread in self._threads[1:])

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.bytes_sent += len(data)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = conn.recv(65536).decode("latin-1")
                self.requests.append(request.split("\r\n", 1)[0])
                payload = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
                if self.mode in {"trickle", "trickle_body"}:
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    head += f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    if self.mode == "trickle_body":
                        self._send(conn, head)
                        head = b""
                    for byte in head + payload:
                        if self._stop.wait(self.interval_s):
                            return
                        self._send(conn, bytes([byte]))
                elif self.mode in {"flood", "flood_chunked"}:
                    block = b"[" + b"0," * (512 * 1024 - 1)
                    if self.mode == "flood":
                        self._send(conn, f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                         f"Content-Length: {self.size}\r\n\r\n".encode())
                        sent = 0
                        while sent < self.size and not self._stop.is_set():
                            chunk = block[: self.size - sent]
                            self._send(conn, chunk)
                            sent += len(chunk)
                    else:
                        self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n")
                        sent = 0
                        while sent < self.size and not self._stop.is_set():
                            self._send(conn, f"{len(block):x}\r\n".encode() + block + b"\r\n")
                            sent += len(block)
                        self._send(conn, b"0\r\n\r\n")
                else:
                    self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                                     + payload)
                    time.sleep(0.05)
            except OSError:
                return  # the client hung up: that is what a bounded client does
