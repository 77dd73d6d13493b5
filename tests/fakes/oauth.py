"""A local OAuth2 authorization server and API for tests: issues tokens, counts them, refuses stale ones."""

from __future__ import annotations

import base64
from typing import Any

from tests.fakes.server import Answer, FakeAPI, Received


class OAuthServer(FakeAPI):
    def __init__(self, client_id: str = "client-1", client_secret: str = "client-secret-1") -> None:
        super().__init__()
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token = "refresh-1"
        self.rotate = False
        self.expires_in = 3600
        self.token_requests: list[dict[str, str]] = []
        self.api_calls: list[str] = []
        self.valid: set[str] = set()
        self.refuse_all = False  # the API answers 401 to every token (a revoked client)

    def answer(self, request: Received) -> Answer:
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        token = (request.header("authorization") or "").removeprefix("Bearer ")
        self.api_calls.append(token)
        ok = token in self.valid and not self.refuse_all
        return Answer(200 if ok else 401, {"ok": ok})

    def _token(self, request: Received) -> Answer:
        form = request.form()
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.header("authorization") or ""
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        self.token_requests.append(form)
        if (client_id, secret) != (self.client_id, self.client_secret):
            return Answer(401, {"error": "invalid_client"})
        if form.get("grant_type") == "refresh_token" and form.get("refresh_token") != self.refresh_token:
            return Answer(400, {"error": "invalid_grant"})
        token = f"access-{len(self.token_requests)}"
        self.valid = {token}
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        if form.get("grant_type") == "refresh_token" and self.rotate:
            self.refresh_token = f"refresh-{len(self.token_requests) + 1}"
            body["refresh_token"] = self.refresh_token
        return Answer(200, body)
