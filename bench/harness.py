"""What every benchmark needs: Redis, a ledger, the provider simulator, worker fleets, and a clock."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import redis
from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult
from sqlalchemy import MetaData

from integrations.ledger import schema
from integrations.testing.provider import ProviderSimulator
from integrations.testing.redis_server import redis_for
from tasks.worker import running_worker

ROOT = Path(__file__).resolve().parents[1]
# The default ledger: a SQLite file in the bench's own folder.
SQLITE_LEDGER = "sqlite:///{folder}/ledger.sqlite3"
# The fleets the overhead benchmark compares: the pipeline, a bare task, the hand-rolled alternative, and
# the floor (a bare task plus the least the promises cost: bench.floor_app).
OVERHEAD_FLEETS = ("ours", "bare", "hand-rolled", "floor")


@dataclass
class Row:
    name: str
    figure: str
    ours: float
    baseline: float
    baseline_name: str
    verdict: str
    notes: str = ""


@dataclass
class Bench:
    folder: Path
    redis_url: str
    simulator: ProviderSimulator
    env: dict[str, str]
    app: Celery
    stack: ExitStack
    providers: dict[str, str] = field(default_factory=dict)

    def providers_file(self, tables: str) -> None:
        (self.folder / "providers.toml").write_text(tables.replace("{url}", self.simulator.url))

    def fleet(
        self,
        queues: Sequence[str],
        instances: int = 4,
        app_module: str = "config.celery_app",
        loglevel: str = "WARNING",
    ) -> None:
        """``instances`` worker instances of one process each: a fleet of that many worker processes."""
        for _ in range(instances):
            self.stack.enter_context(
                running_worker(
                    self.app,
                    self.env,
                    queues,
                    self.folder,
                    concurrency=1,
                    app_module=app_module,
                    loglevel=loglevel,
                )
            )

    def send(self, provider: str, path: str, count: int, prefix: str = "op") -> list[AsyncResult]:
        run = uuid.uuid4().hex[:8]
        return [
            self.app.send_task(
                f"integrations.{provider}.request",
                kwargs={
                    "payload": {"method": "POST", "path": path},
                    "idempotency_key": f"{prefix}-{run}-{i}",
                },
                queue=f"integrations.{provider}",
            )
            for i in range(count)
        ]

    def last_taken_in(self) -> float:
        """When the last operation was first delivered to a worker, on the simulator's clock."""
        from sqlalchemy import func, select

        from integrations.ledger.engine import create_ledger_engine
        from integrations.ledger.models import Operation

        engine = create_ledger_engine(self.env["DATABASE_URL"])
        with engine.connect() as connection:
            last = connection.execute(select(func.max(Operation.created_at))).scalar_one()
        engine.dispose()
        return float(last.timestamp() - (time.time() - time.monotonic()))

    def send_baseline(
        self, task: str, path: str, count: int, queue: str = "bench.baseline"
    ) -> list[AsyncResult]:
        run = uuid.uuid4().hex[:8]
        url = self.simulator.url + path
        return [self.app.send_task(task, args=[url, f"b-{run}-{i}"], queue=queue) for i in range(count)]

    def _tables(self, metadata: MetaData) -> None:
        """A baseline's own tables (the hand-rolled idempotency keys, the floor's rows), made afresh in the
        ledger's database and dropped at the end."""
        from bench import handrolled_app

        engine = handrolled_app.engine_for(self.env["DATABASE_URL"])
        metadata.drop_all(engine)
        metadata.create_all(engine)

        def drop() -> None:
            metadata.drop_all(engine)
            engine.dispose()

        self.stack.callback(drop)

    def overhead_fleet(self, name: str, instances: int = 4) -> Callable[[int], list[AsyncResult]]:
        """Start one fleet of the overhead comparison (``OVERHEAD_FLEETS``) on the ``fast`` provider;
        returns how to send it that many operations."""
        if name == "ours":
            self.fleet(["integrations.fast"], instances)
            return lambda count: self.send("fast", "/v1/fast", count)
        if name == "bare":
            self.fleet(["bench.baseline"], instances, app_module="bench.baseline_app")
            return lambda count: self.send_baseline("bench.bare_call", "/v1/fast", count)
        if name == "hand-rolled":
            from bench import handrolled_app

            self._tables(handrolled_app.metadata)
            self.fleet([handrolled_app.QUEUE], instances, app_module="bench.handrolled_app")
            return lambda count: self.send_handrolled("fast", "/v1/fast", count)
        if name == "floor":
            from bench import floor_app

            self._tables(floor_app.metadata)
            self.fleet([floor_app.QUEUE], instances, app_module="bench.floor_app")
            return lambda count: self.send_baseline(floor_app.TASK, "/v1/fast", count, floor_app.QUEUE)
        raise ValueError(f"no fleet {name!r}: one of {', '.join(OVERHEAD_FLEETS)}")

    def send_handrolled(self, provider: str, path: str, count: int) -> list[AsyncResult]:
        from bench import handrolled_app

        run = uuid.uuid4().hex[:8]
        url = self.simulator.url + path
        return [
            self.app.send_task(
                handrolled_app.TASK,
                kwargs={"provider": provider, "url": url, "idempotency_key": f"h-{run}-{i}"},
                queue=handrolled_app.QUEUE,
            )
            for i in range(count)
        ]


# How often ``wait_all`` asks for the results still pending, and how many of the oldest at a time.
POLL_SECONDS = 0.005
POLL_KEYS = 50


def wait_all(results: Sequence[AsyncResult], timeout: float = 600) -> tuple[int, int]:
    """Wait until every task's result is stored; returns (succeeded, failed), a task not ended within
    ``timeout`` counted as failed.

    The results are read straight from the result backend's Redis, the oldest pending ones in one MGET
    every few milliseconds, rather than with ``AsyncResult.get`` in turn (the client app has no result
    backend, so it subscribes to nothing). Celery's Redis result consumer subscribes to every task's channel
    when it is sent and unsubscribes up to three times when its result is read; a caller waiting for a
    result not stored yet reads the queued confirmations one per turn of its loop, and behind 500 others
    that took 0.3 to 0.6 s after a fleet's last call: the client measured itself, and the more so the
    slower the fleet. Polling costs the client the same whatever the fleet."""
    if not results:
        return 0, 0
    reader = _results(results[0].app.conf.broker_url)
    pending = list(results)
    ok = failed = 0
    deadline = time.monotonic() + timeout
    while pending:
        oldest, rest = pending[:POLL_KEYS], pending[POLL_KEYS:]
        stored = reader.mget([reader.get_key_for_task(result.id) for result in oldest])
        waiting = []
        for result, meta in zip(oldest, stored, strict=True):
            status = reader.decode_result(meta)["status"] if meta is not None else states.PENDING
            if status not in states.READY_STATES:
                waiting.append(result)
            elif status == states.SUCCESS:
                ok += 1
            else:
                failed += 1
        pending = waiting + rest
        if waiting:
            if time.monotonic() > deadline:
                return ok, failed + len(pending)
            time.sleep(POLL_SECONDS)
    return ok, failed


@cache
def _results(url: str) -> RedisBackend:
    """Celery's Redis result backend on ``url``, to read results with (and not to wait on)."""
    backend = Celery("bench-results", backend=url).backend
    assert isinstance(backend, RedisBackend)
    return backend


def _truncate(database: str) -> None:
    from sqlalchemy import text

    from integrations.ledger.engine import create_ledger_engine

    engine = create_ledger_engine(database)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE operations"))
    engine.dispose()


@contextmanager
def bench(database: str | None = None) -> Iterator[Bench]:
    """Redis, a ledger, the provider simulator and a client app; the fleets started on it stop at the end.
    The ledger is ``database``, else BENCH_DATABASE_URL, else ``SQLITE_LEDGER`` (``{folder}``: the
    bench's temporary folder)."""
    with ExitStack() as stack:
        server_url, _private = stack.enter_context(redis_for(os.environ.get("REDIS_URL")))
        redis_url = server_url.rsplit("/", 1)[0] + "/11"  # a database of the benchmarks' own
        redis.Redis.from_url(redis_url).flushdb()
        stack.callback(lambda: redis.Redis.from_url(redis_url).flushdb())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="integrations-bench-")))
        simulator = stack.enter_context(ProviderSimulator())
        database = (database or os.environ.get("BENCH_DATABASE_URL") or SQLITE_LEDGER).replace(
            "{folder}", str(folder)
        )
        schema.upgrade(database)
        if database.startswith("postgres"):
            stack.callback(_truncate, database)
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            DATABASE_URL=database,
            INTEGRATIONS_PROVIDERS_FILE=str(folder / "providers.toml"),
            PYTHONPATH=str(ROOT),
        )
        env.pop("BROKER_URL", None)
        # No result backend: the client sends, and ``wait_all`` reads the results the workers store there.
        app = Celery("bench-client", broker=redis_url)
        app.conf.update(broker_connection_retry_on_startup=True)
        stack.callback(app.close)
        yield Bench(folder, redis_url, simulator, env, app, stack)
