"""A local OAuth2 authorization server and API for tests: issues tokens, counts them, refuses stale ones."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


class OAuthServer:
    def __init__(self, client_id: str = "client-1", client_secret: str = "client-secret-1") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token = "refresh-1"
        self.rotate = False
        self.expires_in = 3600
        self.token_requests: list[dict[str, str]] = []
        self.api_calls: list[str] = []
        self.valid: set[str] = set()
        self.refuse_all = False  # the API answers 401 to every token (a revoked client)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OAuthServer:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if self.path != "/token":
                    return self._api()
                form = dict(parse_qsl(raw))
                client_id, secret = form.get("client_id"), form.get("client_secret")
                basic = self.headers.get("Authorization", "")
                if basic.startswith("Basic "):
                    client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                with owner.lock:
                    owner.token_requests.append(form)
                    if (client_id, secret) != (owner.client_id, owner.client_secret):
                        return self._answer(401, {"error": "invalid_client"})
                    if (
                        form.get("grant_type") == "refresh_token"
                        and form.get("refresh_token") != owner.refresh_token
                    ):
                        return self._answer(400, {"error": "invalid_grant"})
                    token = f"access-{len(owner.token_requests)}"
                    owner.valid = {token}
                    body: dict[str, Any] = {
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": owner.expires_in,
                    }
                    if form.get("grant_type") == "refresh_token" and owner.rotate:
                        owner.refresh_token = f"refresh-{len(owner.token_requests) + 1}"
                        body["refresh_token"] = owner.refresh_token
                self._answer(200, body)

            def do_GET(self) -> None:
                self._api()

            def _api(self) -> None:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                with owner.lock:
                    owner.api_calls.append(token)
                    ok = token in owner.valid and not owner.refuse_all
                self._answer(200 if ok else 401, {"ok": ok})

        return Handler
