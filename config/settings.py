"""Settings from the environment (pydantic-settings). Nothing secret lives here."""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PROVIDERS_FILE = Path(__file__).with_name("providers.toml")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # Redis: the result backend, and the broker unless BROKER_URL names another (e.g. amqp://).
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    broker_url_override: str | None = Field(None, validation_alias="BROKER_URL")
    # The breakers', throttles' and shared tokens' state, when it lives on another Redis than the broker's;
    # redis+cluster://host:port (rediss+cluster:// with TLS) names one node of a Redis Cluster.
    state_redis_url_override: str | None = Field(None, validation_alias="INTEGRATIONS_STATE_REDIS_URL")
    # RabbitMQ only: the type of the queues declared. "quorum": replicated queues, on which a countdown waits
    # in the broker (Celery's native delayed delivery) instead of in a worker's memory.
    queue_type: Literal["classic", "quorum"] = Field("classic", validation_alias="INTEGRATIONS_QUEUE_TYPE")
    # The ledger: a SQLite file by default (relative to the working directory); postgresql:// URLs work.
    database_url: str = Field("sqlite:///integrations.sqlite3", validation_alias="DATABASE_URL")
    providers_file: Path = Field(DEFAULT_PROVIDERS_FILE, validation_alias="INTEGRATIONS_PROVIDERS_FILE")
    # How long ended operations keep their idempotency record (a resend within it replays the outcome).
    retention_days: float = Field(7.0, gt=0, validation_alias="INTEGRATIONS_RETENTION_DAYS")
    # Failed and dead operations (dead letters) are kept longer, for operators to inspect and replay.
    dead_letter_retention_days: float = Field(
        30.0, gt=0, validation_alias="INTEGRATIONS_DEAD_LETTER_RETENTION_DAYS"
    )
    # How long inbound webhook events are kept: a delivery of one again within it is known as a duplicate.
    webhook_retention_days: float = Field(7.0, gt=0, validation_alias="INTEGRATIONS_WEBHOOK_RETENTION_DAYS")
    # Webhook event handlers outside any installed package: module:callable[,module:callable], each
    # returning {(provider or "*", event type or "*"): handler} (integrations/webhooks/handling.py).
    event_handlers: str = Field("", validation_alias="INTEGRATIONS_EVENT_HANDLERS")

    # How often beat runs the sweeper, which sends again what the broker dropped; an operation that had no
    # delivery for this long past its due time is swept (the grace), so a lost one goes again within two.
    sweep_interval_seconds: float = Field(30.0, gt=0, validation_alias="INTEGRATIONS_SWEEP_INTERVAL")

    # Task events from the moment a worker starts, for a monitor that does not ask for them. Off, they are
    # sent while Flower runs (it asks every worker to send them: Celery's enable_events), and cost nothing
    # when nobody watches: three publishes to the broker per delivery.
    task_events: bool = Field(False, validation_alias="INTEGRATIONS_TASK_EVENTS")

    # The workers' log lines: Celery's text, or one JSON object per line for a log shipper (tasks/logs.py).
    log_format: Literal["text", "json"] = Field("text", validation_alias="INTEGRATIONS_LOG_FORMAT")

    @property
    def broker_url(self) -> str:
        return self.broker_url_override or self.redis_url

    @property
    def state_redis_url(self) -> str:
        return self.state_redis_url_override or self.redis_url

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)

    @property
    def webhook_retention(self) -> timedelta:
        return timedelta(days=self.webhook_retention_days)

    @property
    def sweep_interval(self) -> timedelta:
        return timedelta(seconds=self.sweep_interval_seconds)

    @property
    def dead_letter_retention(self) -> timedelta:
        return timedelta(days=self.dead_letter_retention_days)


@cache
def get_settings() -> Settings:
    return Settings()
