"""The workers' result backend (``tasks.results``): Celery's Redis backend storing a result in one round
trip, read by an application's plain Celery app as any other, and never overwriting a success."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery, states

from config.celery_settings import celery_config
from config.settings import Settings
from integrations.testing.redis_server import private_redis
from tasks import register_tasks
from tasks.results import ResultBackend

RESULT = {"status": "succeeded", "operation_id": "op-1", "response": {"status_code": 201}}


@pytest.fixture(scope="module")
def redis_alone() -> Iterator[str]:
    """A Redis of the module's own, whose command counts are this module's alone."""
    with private_redis() as url:
        yield url


def worker_app(redis_url: str, tmp_path: Path) -> Celery:
    """An app as the workers build it: the settings, then the tasks."""
    settings = Settings(REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    app = Celery("workers")
    app.conf.update(celery_config(settings))
    register_tasks(app, settings)
    return app


def commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def test_the_workers_store_results_with_it_and_the_setting_still_names_the_redis(
    redis_alone: str, tmp_path: Path
) -> None:
    app = worker_app(redis_alone, tmp_path)
    assert isinstance(app.backend, ResultBackend)
    assert app.conf.result_backend == redis_alone


def test_a_result_is_stored_in_one_round_trip_and_read_by_a_plain_celery_app(
    redis_alone: str, tmp_path: Path
) -> None:
    backend = worker_app(redis_alone, tmp_path).backend
    caller = Celery("application", broker=redis_alone, backend=redis_alone)
    client = redis.Redis.from_url(redis_alone)
    task_id = str(uuid.uuid4())
    backend.store_result(str(uuid.uuid4()), RESULT, states.SUCCESS)  # the script loaded

    before = commands(client)
    backend.store_result(task_id, RESULT, states.SUCCESS)
    after = commands(client)

    assert {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name)} == {
        "evalsha": 1,
        "set": 1,
        "get": 1,
        "publish": 1,
        "info": 1,  # the count itself
    }
    assert caller.AsyncResult(task_id).get(timeout=5) == RESULT
    assert 0 < client.ttl(backend.get_key_for_task(task_id)) <= backend.expires
    client.close()


def test_a_caller_waiting_for_the_result_is_told_when_it_is_stored(redis_alone: str, tmp_path: Path) -> None:
    backend = worker_app(redis_alone, tmp_path).backend
    task_id = str(uuid.uuid4())
    listener = redis.Redis.from_url(redis_alone).pubsub()
    listener.subscribe(backend.get_key_for_task(task_id))
    assert listener.get_message(timeout=5)["type"] == "subscribe"

    backend.store_result(task_id, RESULT, states.SUCCESS)

    message = listener.get_message(timeout=5)
    assert message is not None and backend.decode_result(message["data"])["result"] == RESULT
    listener.close()


def test_a_success_is_never_overwritten_but_an_earlier_state_is(redis_alone: str, tmp_path: Path) -> None:
    backend = worker_app(redis_alone, tmp_path).backend
    caller = Celery("application", broker=redis_alone, backend=redis_alone)
    task_id = str(uuid.uuid4())

    backend.store_result(task_id, None, states.RETRY)
    assert caller.AsyncResult(task_id).state == states.RETRY
    backend.store_result(task_id, RESULT, states.SUCCESS)
    backend.store_result(task_id, None, states.RETRY)  # a late delivery of the same task
    backend.store_result(task_id, ValueError("late"), states.FAILURE)

    assert caller.AsyncResult(task_id).state == states.SUCCESS
    assert caller.AsyncResult(task_id).get(timeout=5) == RESULT


def test_a_redis_that_lost_the_script_is_given_it_again(redis_alone: str, tmp_path: Path) -> None:
    backend = worker_app(redis_alone, tmp_path).backend
    client = redis.Redis.from_url(redis_alone)
    backend.store_result(str(uuid.uuid4()), RESULT, states.SUCCESS)
    client.script_flush()
    task_id = str(uuid.uuid4())

    backend.store_result(task_id, RESULT, states.SUCCESS)

    assert backend.get_task_meta(task_id)["result"] == RESULT
    client.close()
