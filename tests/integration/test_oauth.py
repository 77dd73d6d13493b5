"""OAuth2 tokens shared through real Redis by several workers, against a local authorization server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from pydantic import BaseModel

from integrations.adapters.http import HttpAdapter
from integrations.auth import OAuth2ClientCredentials, OAuth2RefreshToken
from integrations.errors import ProviderRejected
from integrations.oauth import SharedOAuth2Token
from integrations.providers import ProviderSettings
from integrations.resilience.scripts import redis_client
from tests.clock import Clock
from tests.fakes.oauth import OAuthServer
from tests.processes import at_once
from tests.providers import provider_settings


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer() as running:
        yield running


def provider(name: str, server_url: str, **auth: Any) -> ProviderSettings:
    """A provider whose API and token endpoint are ``server_url``'s, with the client credentials grant
    unless ``auth`` says otherwise."""
    client_credentials = {
        "type": "oauth2_client_credentials",
        "token_url": f"{server_url}/token",
        "client_id": "client-1",
        "client_secret": "env:TEST_OAUTH_SECRET",
    }
    return provider_settings(name, base_url=server_url, auth=client_credentials | auth)


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OAUTH_SECRET", "client-secret-1")
    monkeypatch.setenv("TEST_REFRESH_TOKEN", "refresh-1")


def worker_token(client: redis.Redis, settings: ProviderSettings, clock: Clock) -> SharedOAuth2Token:
    """One worker's view of the shared token, on the test's clock."""
    assert isinstance(settings.auth, OAuth2ClientCredentials | OAuth2RefreshToken)
    return SharedOAuth2Token(client, requests.Session(), settings.name, settings.auth, clock=clock.timestamp)


def test_one_token_is_fetched_and_shared_by_every_worker(
    shared_redis: redis.Redis, provider_name: str, server: OAuthServer
) -> None:
    clock = Clock()
    settings = provider(provider_name, server.url)
    first, second = worker_token(shared_redis, settings, clock), worker_token(shared_redis, settings, clock)
    assert first.headers() == second.headers() == {"Authorization": "Bearer access-1"}
    assert len(server.token_requests) == 1
    assert server.token_requests[0]["grant_type"] == "client_credentials"


def test_the_token_is_renewed_a_margin_before_it_expires(
    shared_redis: redis.Redis, provider_name: str, server: OAuthServer
) -> None:
    server.expires_in = 600
    clock = Clock()
    token = worker_token(shared_redis, provider(provider_name, server.url, refresh_margin=300), clock)
    assert token.token() == "access-1"
    clock.advance(299)
    assert token.token() == "access-1"
    clock.advance(2)  # within 300 s of expiry
    assert token.token() == "access-2"


def api_adapter(client: redis.Redis, name: str, server: OAuthServer) -> tuple[HttpAdapter, BaseModel]:
    """An adapter of a worker whose provider takes the shared token, and a payload for its API."""
    settings = provider(name, server.url)
    adapter = HttpAdapter(settings, requests.Session(), worker_token(client, settings, Clock()))
    return adapter, adapter.parse_payload("request", {"method": "GET", "path": "/api/me"})


def test_a_401_renews_the_token_once_and_retries_once(
    shared_redis: redis.Redis, provider_name: str, server: OAuthServer
) -> None:
    adapter, payload = api_adapter(shared_redis, provider_name, server)
    assert adapter.call("request", payload, idempotency_key="k1", request_id="r").model.status_code == 200  # type: ignore[attr-defined]
    server.valid = set()  # the provider revokes the token
    assert adapter.call("request", payload, idempotency_key="k2", request_id="r").model.status_code == 200  # type: ignore[attr-defined]
    assert server.api_calls == ["access-1", "access-1", "access-2"]
    assert len(server.token_requests) == 2


def test_a_401_after_renewal_is_a_rejection_not_a_loop(
    shared_redis: redis.Redis, provider_name: str, server: OAuthServer
) -> None:
    adapter, payload = api_adapter(shared_redis, provider_name, server)
    server.refuse_all = True
    with pytest.raises(ProviderRejected) as caught:
        adapter.call("request", payload, idempotency_key="k", request_id="r")
    assert caught.value.status_code == 401
    assert len(server.api_calls) == 2 and len(server.token_requests) == 2  # one renewal, one retry


def test_a_refused_client_is_named_without_its_secret(
    shared_redis: redis.Redis, provider_name: str, server: OAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_OAUTH_SECRET", "wrong-secret-xyz")
    clock = Clock()
    token = worker_token(shared_redis, provider(provider_name, server.url), clock)
    with pytest.raises(ProviderRejected) as caught:
        token.token()
    assert "token endpoint" in caught.value.message and "refused" in caught.value.message
    assert caught.value.body == {"error": "invalid_client"}
    assert "wrong-secret-xyz" not in caught.value.message


def test_the_refresh_token_grant_keeps_a_rotated_refresh_token(
    shared_redis: redis.Redis, provider_name: str, server: OAuthServer
) -> None:
    server.rotate, server.expires_in = True, 600
    clock = Clock()
    settings = provider(
        provider_name,
        server.url,
        type="oauth2_refresh_token",
        refresh_token="env:TEST_REFRESH_TOKEN",
        client_auth="post",
    )
    token = worker_token(shared_redis, settings, clock)
    assert token.token() == "access-1"
    clock.advance(400)
    assert token.token() == "access-2"  # with the refresh token the first answer rotated in
    assert [r["refresh_token"] for r in server.token_requests] == ["refresh-1", "refresh-2"]
    assert server.token_requests[0]["client_id"] == "client-1"


def _renew_at_expiry(start: Any, results: Any, url: str, name: str, server_url: str, clock: Clock) -> None:
    import os

    os.environ["TEST_OAUTH_SECRET"] = "client-secret-1"
    settings = provider(name, server_url)
    assert isinstance(settings.auth, OAuth2ClientCredentials)
    token = SharedOAuth2Token(
        redis_client(url), requests.Session(), name, settings.auth, clock=clock.timestamp
    )
    start.wait()
    results.put(token.token())


def test_four_workers_at_expiry_make_one_refresh(
    shared_redis: redis.Redis, redis_url: str, provider_name: str, server: OAuthServer
) -> None:
    clock = Clock()
    assert worker_token(shared_redis, provider(provider_name, server.url), clock).token() == "access-1"
    clock.advance(3600 - 100)  # inside the refresh margin, for every worker at once
    tokens = at_once(_renew_at_expiry, 4, redis_url, provider_name, server.url, clock)
    assert len(server.token_requests) == 2  # one refresh for the four
    # Those that found the refresh under way went on with the old token, still valid for 100 s.
    assert set(tokens) <= {"access-1", "access-2"} and "access-2" in tokens
    assert worker_token(shared_redis, provider(provider_name, server.url), clock).token() == "access-2"
