"""OAuth2 access tokens shared by every worker through Redis, refreshed by one worker at a time.

Each worker process asks Redis for the provider's current token; a margin before it expires, the first
worker to take the refresh lock fetches a new one from the token endpoint (client credentials or refresh
token grant, RFC 6749 4.4 and 6) while the others keep using the old one, still valid. A 401 from the
provider makes the worker that saw it replace that token once (unless another already did).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
import requests

from integrations import keys
from integrations.auth import Credentials, OAuth2, OAuth2RefreshToken, resolve_secret
from integrations.errors import ErrorType, ProviderRejected, TransientError
from integrations.redaction import register_secret

log = logging.getLogger("integrations.auth")

# How long one worker may hold the refresh, and how long the others wait for it when they have no
# valid token to go on with.
LOCK_TTL = 30.0
WAIT_FOR_REFRESH = 10.0
KEEP = 30 * 24 * 3600  # seconds: the hash outlives tokens, to keep a rotated refresh token


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # seconds on the workers' clock


class SharedOAuth2Token(Credentials):
    """The access token of one provider, as every worker shares it."""

    def __init__(
        self,
        client: redis.Redis,
        session: requests.Session,
        provider: str,
        auth: OAuth2,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.client, self.session, self.provider, self.auth = client, session, provider, auth
        self.timeout, self.clock, self.sleep = timeout, clock, sleep
        where = f"[providers.{provider}.auth]"
        self.client_secret = (
            resolve_secret(auth.client_secret, f"{where} key 'client_secret'") if auth.client_secret else None
        )
        self.refresh_token = (
            resolve_secret(auth.refresh_token, f"{where} key 'refresh_token'")
            if isinstance(auth, OAuth2RefreshToken)
            else None
        )
        self.key = keys.oauth_token(provider)
        self.lock = keys.oauth_refresh_lock(provider)
        self.fetches = 0  # token requests this process made

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def refresh(self, rejected: dict[str, str]) -> bool:
        value = rejected.get("Authorization", "").removeprefix("Bearer ")
        self._renew(stale=Token(value, 0.0))
        return True

    def token(self) -> str:
        cached = self._cached()
        if cached is not None and cached.expires_at - self.auth.refresh_margin > self.clock():
            return cached.value
        return self._renew(stale=cached)

    def _fresh(self, token: Token | None, stale: Token | None) -> bool:
        return (
            token is not None
            and (stale is None or token.value != stale.value)
            and token.expires_at - self.auth.refresh_margin > self.clock()
        )

    def _renew(self, stale: Token | None) -> str:
        deadline = self.clock() + WAIT_FOR_REFRESH
        me = uuid.uuid4().hex
        while True:
            if self.client.set(self.lock, me, nx=True, px=int(LOCK_TTL * 1000)):
                try:
                    current = self._cached()
                    if self._fresh(current, stale):  # another worker renewed it just before us
                        assert current is not None
                        return current.value
                    return self._fetch(current)
                finally:
                    if self.client.get(self.lock) == me:
                        self.client.delete(self.lock)
            current = self._cached()
            if self._fresh(current, stale):
                assert current is not None
                return current.value
            if stale is not None and stale.expires_at > self.clock():
                return stale.value  # still valid while another worker renews it
            if self.clock() > deadline:
                raise TransientError(
                    f"{self.provider}: no OAuth2 token: another worker has been renewing it for "
                    f"{WAIT_FOR_REFRESH:g}s",
                    error_type=ErrorType.TIMEOUT,
                )
            self.sleep(0.05)

    def _cached(self) -> Token | None:
        fields = cast(dict[str, str], self.client.hgetall(self.key))
        if not fields.get("token"):
            return None
        register_secret(fields["token"])
        return Token(fields["token"], float(fields.get("expires_at", 0)))

    def _fetch(self, current: Token | None) -> str:
        """Ask the token endpoint for a new access token and share it with the other workers."""
        form, basic = self._grant()
        response = self._post_grant(form, basic)
        return self._share(self._issued(response))

    def _grant(self) -> tuple[dict[str, Any], tuple[str, str] | None]:
        """The token request's form (grant, scopes, client credentials) and its HTTP Basic auth, if any."""
        auth = self.auth
        form: dict[str, Any] = {}
        if isinstance(auth, OAuth2RefreshToken):
            rotated = cast(str | None, self.client.hget(self.key, "refresh_token"))
            form = {"grant_type": "refresh_token", "refresh_token": rotated or self.refresh_token}
        else:
            form = {"grant_type": "client_credentials"}
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        basic = None
        if auth.client_auth == "basic" and self.client_secret is not None:
            basic = (auth.client_id, self.client_secret)
        else:
            form["client_id"] = auth.client_id
            if self.client_secret is not None:
                form["client_secret"] = self.client_secret
        return form, basic

    @property
    def _endpoint(self) -> str:
        return f"{self.provider}: token endpoint {self.auth.token_url}"

    def _post_grant(self, form: dict[str, Any], basic: tuple[str, str] | None) -> requests.Response:
        """Send the token request; a connection error, a 429 or a 5xx is transient and retried later."""
        self.fetches += 1
        try:
            response = self.session.post(self.auth.token_url, data=form, auth=basic, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TransientError(
                f"{self._endpoint}: {type(exc).__name__}", error_type=ErrorType.CONNECTION_ERROR
            ) from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(
                f"{self._endpoint}: HTTP {response.status_code}", status_code=response.status_code
            )
        return response

    def _issued(self, response: requests.Response) -> dict[str, Any]:
        """The token endpoint's answer when it issued a token; a refusal is the provider's, with its error."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            error = {
                k: body.get(k) for k in ("error", "error_description") if isinstance(body, dict) and k in body
            }
            raise ProviderRejected(
                f"{self._endpoint} refused to issue a token (HTTP {response.status_code}): check the client "
                "id, secret and scopes in [providers.<name>.auth]",
                status_code=response.status_code,
                body=error or None,
            )
        return cast(dict[str, Any], body)

    def _share(self, body: dict[str, Any]) -> str:
        """Keep the new token (and a rotated refresh token) in Redis for every worker; the token."""
        token = body["access_token"]
        register_secret(token)
        expires_at = self.clock() + float(body.get("expires_in") or 3600)
        mapping: dict[str, str] = {"token": token, "expires_at": repr(expires_at)}
        if isinstance(body.get("refresh_token"), str):
            register_secret(body["refresh_token"])
            mapping["refresh_token"] = body["refresh_token"]  # a provider that rotates refresh tokens
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping=cast(Any, mapping))
            pipe.expire(self.key, KEEP)
            pipe.execute()
        log.info("%s: new OAuth2 access token, valid %.0fs", self.provider, expires_at - self.clock())
        return str(token)
