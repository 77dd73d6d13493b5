"""``INTEGRATIONS_STATE_REDIS_URL``: the guards' state on a Redis of its own, apart from the broker's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.settings import Settings
from integrations.errors import ConfigError
from integrations.message import Delivery
from integrations.outcome import Done
from integrations.resilience.scripts import redis_client
from integrations.runtime import Runtime
from integrations.testing.provider import ProviderSimulator
from integrations.testing.redis_server import private_redis


@pytest.fixture(scope="module")
def state_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


def test_the_guards_keep_their_state_on_the_state_redis_and_none_on_the_broker_s(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ledger_url: str,
    redis_url: str,
    state_url: str,
    simulator: ProviderSimulator,
    provider_name: str,
) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(
        f'[providers.{provider_name}]\nadapter = "http"\nbase_url = "{simulator.url}"\nrate_limit = "50/s"\n'
    )
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INTEGRATIONS_STATE_REDIS_URL", state_url)
    settings = Settings()
    assert (settings.broker_url, settings.state_redis_url) == (redis_url, state_url)
    runtime = Runtime.load(providers, ledger_url, settings.state_redis_url)
    try:
        delivery = {"payload": {"method": "POST", "path": "/v1/x"}, "idempotency_key": "k1"}
        assert isinstance(runtime.runner(provider_name).run(Delivery("request", delivery)), Done)
    finally:
        runtime.close()
    pattern = f"integrations:{{{provider_name}}}:*"
    with redis.Redis.from_url(state_url) as state, redis.Redis.from_url(redis_url) as broker:
        assert {key.decode() for key in state.scan_iter(match=pattern)} >= {
            f"integrations:{{{provider_name}}}:breaker",
            f"integrations:{{{provider_name}}}:bucket",
        }
        assert list(broker.scan_iter(match=pattern)) == []


def test_without_the_setting_the_state_is_on_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://redis.internal:6379/2")
    monkeypatch.delenv("INTEGRATIONS_STATE_REDIS_URL", raising=False)
    assert Settings().state_redis_url == "redis://redis.internal:6379/2"


@pytest.mark.parametrize("url", ["redis+cluster://:pw@node-1:7000/3", "rediss+cluster://node-1:7000?db=1"])
def test_a_cluster_url_with_a_database_is_refused_saying_what_to_do(url: str) -> None:
    with pytest.raises(
        ConfigError, match=r"Redis Cluster has only database 0: leave the database out"
    ) as caught:
        redis_client(url)
    assert "pw" not in str(caught.value)
