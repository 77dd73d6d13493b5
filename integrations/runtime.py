"""What one worker process holds: the providers, one ``requests.Session``, the adapters and the ledger.

Built lazily inside the process that uses it: a prefork child must not inherit its parent's sockets
or database connections, so a runtime made before a fork is rebuilt after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import redis
import requests

from integrations.adapters.base import Adapter
from integrations.adapters.registry import resolve
from integrations.auth import Credentials, OAuth2ClientCredentials, OAuth2RefreshToken, static_credentials
from integrations.errors import ConfigError
from integrations.guard import Guard
from integrations.ledger.engine import Clock, utcnow
from integrations.ledger.store import Ledger
from integrations.metrics import Metrics
from integrations.oauth import SharedOAuth2Token
from integrations.pipeline import OperationRunner
from integrations.providers import ProviderSettings, load_providers
from integrations.resilience.breaker import SharedBreaker
from integrations.resilience.guards import SharedGuard
from integrations.resilience.scripts import redis_client
from integrations.resilience.throttle import Throttle


@dataclass
class Runtime:
    providers: dict[str, ProviderSettings]
    adapter_classes: dict[str, type[Adapter]]
    database_url: str
    redis_url: str  # the guards' and shared tokens' Redis (INTEGRATIONS_STATE_REDIS_URL), not the broker's
    retention: timedelta = timedelta(days=7)
    dead_letter_retention: timedelta = timedelta(days=30)
    sweep_grace: timedelta = timedelta(seconds=30)
    webhook_retention: timedelta = timedelta(days=7)  # how long inbound webhook events are kept
    metrics: Metrics | None = None  # what the runners count, when the process keeps metrics
    pid: int = field(default_factory=os.getpid)
    _session: requests.Session | None = None
    _ledger: Ledger | None = None
    _redis: redis.Redis | None = None
    _runners: dict[str, OperationRunner] = field(default_factory=dict)

    @classmethod
    def load(cls, providers_file: Path | str, database_url: str, redis_url: str) -> Runtime:
        providers = load_providers(providers_file)
        return cls(providers, resolve(providers, str(providers_file)), database_url, redis_url)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # adapters apply the environment's proxies, read once
        return self._session

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger.connect(self.database_url)
        return self._ledger

    @property
    def redis(self) -> redis.Redis:
        """The client of the shared breakers, throttles and OAuth2 tokens, on ``redis_url`` (a Redis
        Cluster with ``redis+cluster://``); the broker's and result backend's connections are Celery's."""
        if self._redis is None:
            self._redis = redis_client(self.redis_url)
        return self._redis

    def credentials(self, provider: ProviderSettings) -> Credentials:
        auth = provider.auth
        if isinstance(auth, OAuth2ClientCredentials | OAuth2RefreshToken):
            return SharedOAuth2Token(self.redis, self.session, provider.name, auth, timeout=provider.timeout)
        return static_credentials(provider.name, auth)

    def runner(self, provider: str) -> OperationRunner:
        runner = self._runners.get(provider)
        if runner is None:
            try:
                settings = self.providers[provider]
            except KeyError:
                raise ConfigError(f"provider {provider!r} is not in the providers file") from None
            adapter = self.adapter_classes[provider](settings, self.session, self.credentials(settings))
            runner = self._runners[provider] = build_runner(
                settings, adapter, self.ledger, self.redis, metrics=self.metrics
            )
        return runner

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        if self._ledger is not None:
            self._ledger.dispose()
        if self._redis is not None:
            self._redis.close()


def guards(
    provider: ProviderSettings, client: redis.Redis, *, clock_ms: Callable[[], int] | None = None
) -> list[Guard]:
    """A provider's guards: its shared breaker and throttle, asked together in one round trip (the breaker
    first: an open one takes no token). ``clock_ms`` replaces the Redis server's clock, for tests that must
    not wait."""
    breaker = SharedBreaker(
        client, provider.name, provider.breaker, probe_ttl=provider.lease_seconds, clock=clock_ms
    )
    return [SharedGuard(provider, breaker, Throttle(client, provider, clock=clock_ms))]


def build_runner(
    provider: ProviderSettings,
    adapter: Adapter,
    ledger: Ledger,
    client: redis.Redis,
    *,
    clock: Clock = utcnow,
    clock_ms: Callable[[], int] | None = None,
    metrics: Metrics | None = None,
) -> OperationRunner:
    """The runner of one provider with its shared breaker and throttle on ``client``: what a worker runs,
    and what the tests build (with a clock they move by hand)."""
    return OperationRunner(
        provider,
        adapter,
        ledger,
        clock=clock,
        guards=guards(provider, client, clock_ms=clock_ms),
        metrics=metrics,
    )
