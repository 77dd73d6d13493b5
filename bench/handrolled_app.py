"""The hand-rolled alternative: what a careful team writes today without this project, from well-kept
libraries. A Celery task with ``autoretry_for`` and exponential backoff; per provider, a pybreaker circuit
breaker whose state is in Redis (``CircuitRedisStorage``, shared by every worker) and a moving-window rate
limit in Redis (``limits``); and an idempotency row in the ledger's SQL database, inserted before the call
(a duplicate key answers with the stored result) and completed after it. Configured as carefully as our
app and the bare baseline (JSON, late acks, prefetch 1)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pybreaker
import redis
import requests
from celery import Task
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from bench.careful import REDIS_URL, careful_app

QUEUE = "bench.handrolled"
TASK = "bench.handrolled_call"
# Never reached in the benchmarks: the limiter is asked on every call, as in production, but never says no.
RATE_PER_SECOND = 10_000


@dataclass(frozen=True)
class ProviderPolicy:
    """What the team configures per provider: the breaker's figures are our providers' defaults, the rate
    the one the overhead benchmark gives ours."""

    rate_per_second: int = RATE_PER_SECOND
    fail_max: int = 5
    reset_timeout: float = 30.0


POLICIES: dict[str, ProviderPolicy] = {"fast": ProviderPolicy()}

app = careful_app("bench-handrolled", QUEUE)

metadata = MetaData()
idempotency_keys = Table(
    "handrolled_idempotency_keys",
    metadata,
    Column("provider", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("task_id", String(64), nullable=False),  # the Celery task that owns the call
    Column("status", String(16), nullable=False),  # started, succeeded, failed
    Column("result", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class ProviderRejected(Exception):
    """The provider answered 4xx: the request itself is wrong, and retrying cannot help."""


class AlreadyFailed(Exception):
    """The idempotency key's operation ended in failure before: it is not tried again."""


class InFlight(Exception):
    """Another task holds the idempotency key and has not finished: retried later."""


def engine_for(url: str) -> Engine:
    """The SQL database of ``url``: psycopg 3 for PostgreSQL; SQLite in WAL mode with a busy timeout,
    since several worker processes write to it."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_recycle=1800)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


# Built on first use, in the worker process: connections must not cross the prefork fork.
@cache
def database() -> Engine:
    return engine_for(os.environ["DATABASE_URL"])


@cache
def _redis_pool() -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(REDIS_URL)


@cache
def limiter() -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(RedisStorage("redis://", connection_pool=_redis_pool()))


def _answered(exc: BaseException) -> bool:
    """A 4xx (429 included, which the rate limit is for) shows a provider that works: not a breaker
    failure."""
    response = getattr(exc, "response", None)
    return isinstance(exc, requests.HTTPError) and response is not None and response.status_code < 500


@cache
def breaker(provider: str) -> pybreaker.CircuitBreaker:
    policy = POLICIES[provider]
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, redis.Redis(connection_pool=_redis_pool()), namespace=f"handrolled:{provider}"
    )
    return pybreaker.CircuitBreaker(
        fail_max=policy.fail_max,
        reset_timeout=policy.reset_timeout,
        exclude=[_answered],
        state_storage=storage,
        name=provider,
    )


@cache
def session() -> requests.Session:
    return requests.Session()


def _now() -> datetime:
    return datetime.now(UTC)


def claim(provider: str, key: str, task_id: str) -> dict[str, Any] | None:
    """Take ``key`` for ``task_id``: None when the call is to be made (a new key, or this task's own
    retry), the stored result when it was made before."""
    now = _now()
    try:
        with database().begin() as connection:
            connection.execute(
                insert(idempotency_keys).values(
                    provider=provider,
                    key=key,
                    task_id=task_id,
                    status="started",
                    created_at=now,
                    updated_at=now,
                )
            )
        return None
    except IntegrityError:
        pass
    with database().connect() as connection:
        row = connection.execute(
            select(idempotency_keys.c.task_id, idempotency_keys.c.status, idempotency_keys.c.result).where(
                idempotency_keys.c.provider == provider, idempotency_keys.c.key == key
            )
        ).one()
    if row.status == "succeeded":
        return dict(row.result, replayed=True)
    if row.status == "failed":
        raise AlreadyFailed(f"{provider}: idempotency key {key!r} failed before: {row.result}")
    if row.task_id == task_id:
        return None
    raise InFlight(f"{provider}: idempotency key {key!r} is being called by task {row.task_id}")


def complete(provider: str, key: str, status: str, result: dict[str, Any]) -> None:
    with database().begin() as connection:
        connection.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.provider == provider, idempotency_keys.c.key == key)
            .values(status=status, result=result, updated_at=_now())
        )


def _post(url: str, key: str) -> requests.Response:
    response = session().post(url, headers={"Idempotency-Key": key}, timeout=10)
    if response.status_code >= 500 or response.status_code == 429:
        response.raise_for_status()
    return response


class IdempotentTask(Task):  # type: ignore[misc]
    """Marks the key's row failed when the task gives up, so a duplicate does not wait for it forever."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, AlreadyFailed | InFlight | ProviderRejected):
            return  # the row is another task's, or already holds the provider's answer
        provider, key = kwargs["provider"], kwargs["idempotency_key"]
        complete(provider, key, "failed", {"error": type(exc).__name__})


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    base=IdempotentTask,
    name=TASK,
    autoretry_for=(requests.RequestException, InFlight),
    retry_backoff=1,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=7,  # 8 attempts, as our providers' default max_attempts
)
def handrolled_call(self: Any, provider: str, url: str, idempotency_key: str) -> dict[str, Any]:
    stored = claim(provider, idempotency_key, self.request.id)
    if stored is not None:
        return stored
    policy = POLICIES[provider]
    rate = RateLimitItemPerSecond(policy.rate_per_second)
    if not limiter().hit(rate, "provider", provider):
        reset_at = limiter().get_window_stats(rate, "provider", provider).reset_time
        raise self.retry(countdown=max(0.0, reset_at - time.time()))
    try:
        response = breaker(provider).call(_post, url, idempotency_key)
    except pybreaker.CircuitBreakerError as exc:
        raise self.retry(exc=exc, countdown=policy.reset_timeout) from exc
    json_body = response.headers.get("Content-Type", "").startswith("application/json")
    body = response.json() if json_body and response.content else response.text
    if response.status_code >= 400:
        complete(provider, idempotency_key, "failed", {"status_code": response.status_code, "body": body})
        raise ProviderRejected(f"{provider}: {response.status_code} for idempotency key {idempotency_key!r}")
    result = {"status_code": response.status_code, "body": body}
    complete(provider, idempotency_key, "succeeded", result)
    return dict(result, replayed=False)
