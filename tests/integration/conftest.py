"""Fixtures of the integration tests: the pipeline of one provider against the provider simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from integrations.adapters.http import HttpAdapter
from integrations.ledger.store import Ledger
from integrations.pipeline import OperationRunner
from integrations.testing.provider import ProviderSimulator
from tests.clock import Clock
from tests.providers import provider_settings


@pytest.fixture
def runner(ledger_url: str, simulator: ProviderSimulator, clock: Clock) -> Iterator[OperationRunner]:
    """The pipeline of provider `sim` (the http adapter), calling the simulator, on the test module's
    ``clock``, moved by hand."""
    provider = provider_settings(
        base_url=simulator.url,
        timeout=1.0,
        retry={"max_attempts": 3, "backoff_base": 0.1, "backoff_max": 1.0},
    )
    session = requests.Session()
    ledger = Ledger.connect(ledger_url, clock=clock)
    yield OperationRunner(provider, HttpAdapter(provider, session), ledger, clock=clock)
    session.close()
    ledger.engine.dispose()
