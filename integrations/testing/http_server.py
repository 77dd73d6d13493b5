"""A threaded HTTP/1.1 server on a local port, served from a background thread: the base of every program
that plays an HTTP API for the tests and the demo (the provider simulator, the providers' fakes).

Connections are kept alive, as a provider's are, and the handler sends its answers without Nagle's delay:
with it, every answer on a kept-alive connection waits out the client's delayed ACK (a fake answered one
client 22 requests/s with it, 280 without).
Stopping closes the idle keep-alive connections too, so a client sees the server go away at once.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

POLL_INTERVAL = 0.05  # how soon the serving thread notices ``stop()``


class KeepAliveHandler(BaseHTTPRequestHandler):
    """A request handler that keeps HTTP/1.1 connections open, sends without Nagle's delay and logs nothing."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        """The request's body, by ``Content-Length`` or in chunks; ``ValueError`` when it is malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""


class _Server(ThreadingHTTPServer):
    """Tracks open connections, so that closing the server also ends the idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops a fleet's concurrent connects, which retry a second later

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._closing = False
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            if self._closing:
                return
            self._connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections so clients see the server go away."""
        with self._connections_lock:
            self._closing = True
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client that went away mid-answer
            return
        super().handle_error(request, client_address)


class LocalHTTPServer:
    """Serves ``handler`` on ``host:port`` (a free port by default) from a background thread.

    The socket is bound on construction, so ``url`` is known before ``start()``; the context manager starts
    and stops it. ``stop()`` may be called more than once; a stopped server cannot start again.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = _Server((host, port), handler)
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> Self:
        with self._state_lock:
            if self._stopped:
                raise RuntimeError(f"a stopped {type(self).__name__} cannot be restarted; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._httpd.serve_forever,
                    kwargs={"poll_interval": POLL_INTERVAL},
                    name=f"{type(self).__name__}-{self.port}",
                    daemon=True,
                )
                self._thread.start()
        return self

    def stop(self) -> None:
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        if thread is not None:
            self._httpd.shutdown()
            thread.join()
        self._httpd.server_close()
        self._httpd.close_connections()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
