"""A local HTTP server playing one provider's API in tests: subclasses answer as the provider's documentation
says; a test may script the next answers (an error body, a 429 with its headers) and reads every request."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body, bracketed keys kept as sent."""
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass(frozen=True)
class Answer:
    """What the server sends back; a dict or list body is sent as JSON. ``lost``: the request is carried
    out, then the connection closes before the answer (an answer lost in transit)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    lost: bool = False


class FakeAPI:
    """Subclasses implement ``answer``; ``script`` queues answers that take precedence, in order."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripted: deque[Answer] = deque()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, *answers: Answer) -> None:
        with self.lock:
            self.scripted.extend(answers)

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def answer(self, request: Received) -> Answer:
        """The provider's documented answer to ``request``; called under ``self.lock``."""
        raise NotImplementedError

    def _respond(self, request: Received) -> Answer:
        with self.lock:
            self.requests.append(request)
            if self.scripted:
                return self.scripted.popleft()
            return self.answer(request)


def _handler(api: FakeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Received(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.rfile.read(length),
            )
            answer = api._respond(request)
            if answer.lost:
                self.close_connection = True
                return
            body = answer.body
            if isinstance(body, dict | list):
                data = json.dumps(body).encode()
                content_type: str | None = "application/json"
            elif isinstance(body, str):
                data, content_type = body.encode(), "text/plain; charset=utf-8"
            else:
                data, content_type = body or b"", None
            self.send_response(answer.status)
            headers = {"Content-Length": str(len(data))} | answer.headers
            if content_type and not any(name.lower() == "content-type" for name in headers):
                headers["Content-Type"] = content_type
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler
