"""A local HTTP server playing one provider's API in tests: subclasses answer as the provider's documentation
says; a test may script the next answers (an error body, a 429 with its headers) and reads every request."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from integrations.testing.http_server import KeepAliveHandler, LocalHTTPServer


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


class FakeAPI(LocalHTTPServer):
    """Subclasses implement ``answer``; ``script`` queues answers that take precedence, in order."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripted: deque[Answer] = deque()
        self.lock = threading.Lock()
        super().__init__(_handler(self))

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


def _handler(api: FakeAPI) -> type[KeepAliveHandler]:
    """The handler class serving ``api``'s requests."""

    class Handler(KeepAliveHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            request = Received(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.read_body(),
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
