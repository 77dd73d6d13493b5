"""What one worker process holds: the providers, one ``requests.Session``, the adapters and the ledger.

Built lazily inside the process that uses it: a prefork child must not inherit its parent's sockets
or database connections, so a runtime made before a fork is rebuilt after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import requests

from integrations.adapters.base import Adapter
from integrations.adapters.registry import resolve
from integrations.errors import ConfigError
from integrations.ledger.store import Ledger
from integrations.pipeline import OperationRunner
from integrations.providers import ProviderSettings, load_providers


@dataclass
class Runtime:
    providers: dict[str, ProviderSettings]
    adapter_classes: dict[str, type[Adapter]]
    database_url: str
    retention: timedelta = timedelta(days=7)
    dead_letter_retention: timedelta = timedelta(days=30)
    interrupts: tuple[type[Exception], ...] = ()
    pid: int = field(default_factory=os.getpid)
    _session: requests.Session | None = None
    _ledger: Ledger | None = None
    _runners: dict[str, OperationRunner] = field(default_factory=dict)

    @classmethod
    def load(cls, providers_file: Path | str, database_url: str) -> Runtime:
        providers = load_providers(providers_file)
        return cls(providers, resolve(providers, str(providers_file)), database_url)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger.connect(self.database_url)
        return self._ledger

    def runner(self, provider: str) -> OperationRunner:
        runner = self._runners.get(provider)
        if runner is None:
            try:
                settings = self.providers[provider]
            except KeyError:
                raise ConfigError(f"provider {provider!r} is not in the providers file") from None
            adapter = self.adapter_classes[provider](settings, self.session)
            runner = self._runners[provider] = OperationRunner(
                settings, adapter, self.ledger, interrupts=self.interrupts
            )
        return runner

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        if self._ledger is not None:
            self._ledger.engine.dispose()
