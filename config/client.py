"""The wiring of ``integrations.client.enqueue``: the workers' settings, and Celery as the publisher.

Found by the core through the ``integrations.client`` entry point, so that an application calling
``enqueue`` reads the same environment as the workers (DATABASE_URL, REDIS_URL, BROKER_URL,
INTEGRATIONS_PROVIDERS_FILE).
"""

from __future__ import annotations

from config.settings import Settings
from integrations.client import Client
from integrations.ledger.store import Ledger
from integrations.runtime import Runtime
from tasks.enqueue import resend


def client() -> Client:
    settings = Settings()
    loaded = Runtime.load(settings.providers_file, settings.database_url, settings.state_redis_url)
    return Client(loaded.providers, loaded.adapter_classes, Ledger.connect(settings.database_url), resend)
