"""Fixtures of the integration tests: the pipeline of one provider against the provider simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result

from integrations.adapters.http import HttpAdapter
from integrations.cli import OperatorContext, build_cli
from integrations.ledger.store import Ledger
from integrations.pipeline import OperationRunner
from integrations.testing.provider import ProviderSimulator
from tests.clock import Clock
from tests.providers import provider_settings
from tests.published import Published


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
    ledger.dispose()


Operate = Callable[..., Result]


def operator_cli(ledger_url: str, redis_url: str, providers: Path) -> Operate:
    """The operator commands as the wiring builds them, on this ledger, Redis and providers file, with a
    publisher that keeps what it is sent."""
    context = OperatorContext(
        database_url=ledger_url,
        redis_url=redis_url,
        providers_file=providers,
        retention=timedelta(days=7),
        dead_letter_retention=timedelta(days=30),
        publish=Published(),
    )

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(build_cli(lambda: context), list(args))

    return invoke
