"""End to end under contention: eight prefork pool processes on one PostgreSQL ledger, 2,000 messages sent
at once through a plain Celery client, a tenth of them duplicates of another message (same key, operation
and payload), half of those sent right behind their twin so that both race for the key. All 2,000 are
queued before the workers start, so every process meets the burst from its first message on.

Two worker instances of four pool processes each (``-c 4``): eight processes write to the ledger at once
either way, and on two cores two main processes leave more CPU to the pool than four would (each main
process consumes, reserves and acknowledges every message it runs), while two instances still mean two
consumers with their own reserved messages, so twins are run by different instances as well as by
different processes of one.

What a user checks: every caller reads a success, a duplicate reads its twin's outcome as a replay; the
provider saw exactly one call per key, carrying that key; the ledger has one succeeded row per key and
nothing left queued or running. The workers' logs must not show a deadlock, a serialization failure, a
lock or statement timeout, or an internal error. A "ledger unavailable" line (the message put back, no
attempt used) is tolerated when it names none of those, because the outcome checks above already prove
that every operation it touched still ended once; its lines are shown when a check fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, ResultSet
from sqlalchemy import select

from integrations.ledger import schema
from integrations.ledger.models import Operation
from integrations.ledger.store import Ledger
from integrations.testing.provider import ProviderSimulator
from tasks.worker import WorkerProcess, running_worker
from tests.conftest import TEST_REDIS_DB, postgres_database, with_redis_db

# A ceiling well above the usual half minute, for a loaded machine: the test's own waits end first, so its
# workers are always stopped and its database dropped (pytest-timeout ends the process without cleaning up).
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

PROVIDER = "contended"
PATH = "/v1/contended"
WORKERS = 2
CONCURRENCY = 4  # pool processes per worker instance: eight in all
DISTINCT_KEYS = 1800
DUPLICATES = 200  # 10 % of the 2,000 messages
ADJACENT_DUPLICATES = 100  # sent right behind their twin; the others anywhere after it
PROVIDER_DELAY = "0.01"  # seconds per call: short, yet long enough for a twin to find its key in flight
RESULTS_TIMEOUT = 120.0

PROVIDERS_FILE = """
[providers.{provider}]
adapter = "http"
base_url = "{url}"
timeout = 2.0
[providers.{provider}.breaker]  # the simulator never fails here; the breaker has nothing to say
fail_max = 1000
min_calls = 1000
[providers.{provider}.retry]
max_attempts = 3
backoff_base = 0.05
backoff_max = 0.2
"""

# What the ledger's database says when contention itself breaks a statement, and the pipeline's own line
# for an exception it did not expect (an unhandled unique violation from a race, for one).
CONTENTION_ERRORS = re.compile(
    r"deadlock detected|could not serialize|lock timeout|canceling statement|"
    r"DeadlockDetected|SerializationFailure|LockNotAvailable|QueryCanceled|internal error",
    re.IGNORECASE,
)
LEDGER_UNAVAILABLE = re.compile(r"ledger unavailable|LedgerUnavailable|ledger_unavailable", re.IGNORECASE)


@pytest.fixture
def contention_ledger_url() -> Iterator[str]:
    """A migrated ledger in a PostgreSQL database of this test's own, dropped afterwards."""
    with postgres_database("integrations_contention") as url:
        schema.upgrade(url)
        yield url


@dataclass(frozen=True)
class Message:
    key: str
    payload: dict[str, Any]


def messages(run: str, rng: random.Random) -> list[Message]:
    """``DISTINCT_KEYS`` operations and ``DUPLICATES`` twins of some of them, in sending order."""
    originals = [
        Message(
            f"{run}-{i}",
            {
                "method": "POST",
                "path": PATH,
                "json": {"order": f"{run}-{i}"},
                "params": {"delay": PROVIDER_DELAY},
            },
        )
        for i in range(DISTINCT_KEYS)
    ]
    twinned = rng.sample(range(DISTINCT_KEYS), DUPLICATES)
    adjacent, anywhere = set(twinned[:ADJACENT_DUPLICATES]), twinned[ADJACENT_DUPLICATES:]
    ordered: list[Message] = []
    for i, message in enumerate(originals):
        ordered.append(message)
        if i in adjacent:
            ordered.append(Message(message.key, dict(message.payload)))
    for i in anywhere:
        after = next(n for n, each in enumerate(ordered) if each.key == originals[i].key)
        ordered.insert(
            rng.randint(after + 1, len(ordered)), Message(originals[i].key, dict(originals[i].payload))
        )
    return ordered


@contextmanager
def worker_fleet(app: Celery, env: dict[str, str], folder: Path) -> Iterator[list[WorkerProcess]]:
    """``WORKERS`` instances of ``CONCURRENCY`` pool processes, started side by side, each stopped with a
    warm shutdown at the end (also when another failed to start)."""
    with ExitStack() as stack:
        contexts = [
            running_worker(
                app, env, [f"integrations.{PROVIDER}"], folder, concurrency=CONCURRENCY, loglevel="INFO"
            )
            for _ in range(WORKERS)
        ]
        with ThreadPoolExecutor(WORKERS) as pool:
            starting = [pool.submit(context.__enter__) for context in contexts]
            started: list[WorkerProcess] = []
            failures: list[BaseException] = []
            for context, future in zip(contexts, starting, strict=True):
                try:
                    started.append(future.result())
                except BaseException as exc:
                    failures.append(exc)
                else:
                    stack.push(context.__exit__)
        if failures:
            raise failures[0]
        yield started


def results_of(sent: list[tuple[Message, AsyncResult]], timeout: float) -> list[tuple[Message, str, Any]]:
    """Each message with its state and value, as its caller reads them. All read together (one MGET per
    look, as ``GroupResult.get`` does): one ``get`` after another would wait half a second on each result
    that is already there. After ``timeout``, a result not ready is read as it stands (``PENDING``, ...)."""
    with contextlib.suppress(CeleryTimeoutError):
        ResultSet([result for _, result in sent]).join_native(timeout=timeout, propagate=False)
    return [(message, result.state, result.result) for message, result in sent]


def log_lines(workers: list[WorkerProcess], pattern: re.Pattern[str]) -> list[str]:
    lines = []
    for worker in workers:
        text = worker.log.read_text(errors="replace") if worker.log.exists() else ""
        lines += [f"{worker.node}: {line}" for line in text.splitlines() if pattern.search(line)]
    return lines


def test_eight_processes_on_one_postgresql_ledger_run_each_key_once(
    contention_ledger_url: str, redis_server_url: str, tmp_path: Path
) -> None:
    broker = with_redis_db(redis_server_url, TEST_REDIS_DB)
    providers = tmp_path / "providers.toml"
    env = dict(
        os.environ,
        REDIS_URL=broker,
        DATABASE_URL=contention_ledger_url,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),  # this test's counts stay out of others' sight
        PYTHONUNBUFFERED="1",
    )
    env.pop("BROKER_URL", None)
    env.pop("INTEGRATIONS_STATE_REDIS_URL", None)
    app = Celery("application", broker=broker, backend=broker)
    app.conf.update(
        accept_content=["json"], result_accept_content=["json"], broker_connection_retry_on_startup=True
    )
    app.backend.client.flushdb()
    ledger = Ledger.connect(contention_ledger_url)
    to_send = messages(f"race-{uuid.uuid4().hex[:8]}", random.Random(20261202))
    keys = {message.key for message in to_send}
    assert (len(to_send), len(keys)) == (DISTINCT_KEYS + DUPLICATES, DISTINCT_KEYS)

    with ProviderSimulator() as simulator, ExitStack() as cleanup:
        cleanup.callback(app.close)
        cleanup.callback(app.backend.client.flushdb)
        cleanup.callback(ledger.engine.dispose)
        providers.write_text(PROVIDERS_FILE.format(provider=PROVIDER, url=simulator.url))
        sent = [
            (
                message,
                app.send_task(
                    f"integrations.{PROVIDER}.request",
                    kwargs={"payload": message.payload, "idempotency_key": message.key},
                    queue=f"integrations.{PROVIDER}",
                ),
            )
            for message in to_send
        ]
        # Every message is queued before a worker starts: a burst, and eight processes at it from the start.
        workers = cleanup.enter_context(worker_fleet(app, env, tmp_path))
        read = results_of(sent, RESULTS_TIMEOUT)
        with ledger.engine.connect() as connection:
            rows = connection.execute(
                select(Operation.idempotency_key, Operation.status, Operation.attempts).where(
                    Operation.provider == PROVIDER
                )
            ).all()
        calls = simulator.calls(path=PATH)
        contention = log_lines(workers, CONTENTION_ERRORS)
        unavailable = log_lines(workers, LEDGER_UNAVAILABLE)

    statuses = Counter((str(status), attempts) for _, status, attempts in rows)
    seen = (
        f"; ledger rows by (status, attempts): {dict(statuses)}; {len(contention)} contention error lines"
        f"; {len(unavailable)} 'ledger unavailable' lines, e.g. {unavailable[:5]}"
    )

    # Every caller reads a success; each key's outcome was made once and read by its twin as a replay.
    not_succeeded = Counter(state for _, state, _ in read if state != "SUCCESS")
    assert not not_succeeded, (
        f"results other than SUCCESS: {dict(not_succeeded)}; e.g. {_first_failure(read)}{seen}"
    )
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message, _, value in read:
        by_key[message.key].append(value)
    for key, values in by_key.items():
        assert all(v["status"] == "succeeded" and v["idempotency_key"] == key for v in values), (key, values)
        assert sum(not v["replayed"] for v in values) == 1, (key, values)
        assert len({v["operation_id"] for v in values}) == 1, (key, values)
        assert all(v["response"] == values[0]["response"] for v in values), (key, values)
        assert values[0]["response"]["body"]["json"] == {"order": key}, (key, values[0])
    assert sum(len(values) == 2 for values in by_key.values()) == DUPLICATES

    # The provider: one call per key, with that key, answered.
    calls_per_key = Counter(call.headers.get("idempotency-key") for call in calls)
    repeated = {key: n for key, n in calls_per_key.items() if n != 1}
    assert not repeated, (
        f"keys called more than once: {len(repeated)}, e.g. {list(repeated.items())[:5]}{seen}"
    )
    assert set(calls_per_key) == keys
    assert all(
        call.status == 200 and call.json == {"order": call.headers["idempotency-key"]} for call in calls
    )

    # The ledger: one row per key, all succeeded in one attempt, none left queued or running.
    rows_per_key = Counter(key for key, _, _ in rows)
    assert len(rows) == DISTINCT_KEYS and set(rows_per_key) == keys, (len(rows), len(rows_per_key))
    assert statuses == {("succeeded", 1): DISTINCT_KEYS}, dict(statuses)

    # The workers' logs: no statement broken by contention.
    assert not contention, (
        f"{len(contention)} contention errors in the workers' logs: {contention[:10]}{seen}"
    )


def _first_failure(read: list[tuple[Message, str, Any]]) -> str:
    for message, state, value in read:
        if state != "SUCCESS":
            return f"{message.key}: {state} {value!r}"
    return "none"
