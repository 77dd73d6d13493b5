"""`make scale`: the project at volume, on this machine.

1. ``memory``: ``--operations`` operations (100,000) sent with idempotency keys and drained by one worker
   (``-c 4``) against the provider simulator; the worker's resident memory (main process and each pool
   process, from /proc) at every 10,000 operations ended. Target: flat within 10 % after the first 10,000.
2. ``lookups``: on a ledger of ``--rows`` rows (1,000,000: mostly succeeded, some dead or failed, some
   queued), `integrations ops show ID`, `ops show KEY --provider P` (target < 20 ms each) and `dlq list`
   (< 200 ms), run in-process through the CLI, best of several, beside the ledger's query alone.
3. ``prune``: ``--rows`` expired rows deleted by ``Ledger.prune`` (what the hourly task runs) while another
   process runs the workers' hot path (``Ledger.start`` then ``Ledger.finish`` of new operations) at a
   steady rate; the longest any one of its statements took, beside the same stream with no pruning.

Parts 2 and 3 run on a SQLite file, and on PostgreSQL too when BENCH_DATABASE_URL names a database of the
benchmark's own (its ``operations`` and ``webhook_events`` are emptied). Part 1 runs on BENCH_DATABASE_URL
when set, else SQLite. ``python -m bench.scale [--operations N] [--rows N] [--part memory|lookups|prune]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, func, select, text

from bench.harness import Row, bench
from config.settings import Settings
from integrations.cli import OperatorContext, build_cli
from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import ENDED_BADLY, OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.rows import table
from integrations.ledger.store import Ledger
from integrations.webhooks.store import EventStore
from tasks.worker import running_worker

console = Console(width=170)

PROVIDER = "scale"
PROVIDERS_FILE = f'[providers.{PROVIDER}]\nadapter = "http"\nbase_url = "{{url}}"\n'
POOL = 4  # the worker's pool processes (-c 4)
STEP = 10_000  # operations ended between two memory samples; the first sample ends the warm-up
AHEAD = 2_000  # operations sent but not yet ended, at most: the broker's queue stays short
CHUNK = 500  # operations sent at a time
STALLED = 120.0  # seconds without an operation ending before the run gives up
MEMORY_TARGET = 0.10
SHOW_TARGET_MS = 20.0
DLQ_TARGET_MS = 200.0
REPEATS = 7
STREAM_RATE = 100.0  # operations per second of the hot-path stream: two statements each
ENDED = [status.value for status in OperationStatus if status.terminal]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=100_000, help="operations of the memory run")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the ledger (lookups, prune)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per statement of the prune")
    parser.add_argument(
        "--baseline-seconds", type=float, default=20.0, help="how long the stream runs with no pruning"
    )
    parser.add_argument(
        "--part", action="append", choices=["memory", "lookups", "prune"], help="run only these parts"
    )
    args = parser.parse_args(argv)
    parts = args.part or ["memory", "lookups", "prune"]
    if args.operations < STEP or args.rows < 1000:
        parser.error(f"--operations must be at least {STEP:,} and --rows at least 1,000")
    rows: list[Row] = []
    if "memory" in parts:
        console.print(f"[bold]memory[/]: {args.operations:,} operations through one worker (-c {POOL}) ...")
        rows += memory(args.operations)
    for url in databases() if {"lookups", "prune"} & set(parts) else []:
        if "lookups" in parts:
            with ledger_database(url) as (engine, name):
                console.print(f"[bold]lookups[/] on {name}: filling {args.rows:,} rows ...")
                rows += lookups(engine, name, args.rows)
        if "prune" in parts:
            with ledger_database(url) as (engine, name):
                console.print(f"[bold]prune[/] on {name}: filling {args.rows:,} expired rows ...")
                rows += pruning(engine, name, args.rows, args.batch, args.baseline_seconds)
    print_rows(rows)
    return 0 if all(row.verdict == "ok" for row in rows) else 1


def print_rows(rows: list[Row]) -> None:
    table_ = Table("benchmark", "figure", "ours", "baseline", "baseline is", "target", "notes")
    for row in rows:
        table_.add_row(
            row.name,
            row.figure,
            f"{row.ours:,}" if isinstance(row.ours, int) else f"{row.ours:.3g}",
            f"{row.baseline:,}" if isinstance(row.baseline, int) else f"{row.baseline:.3g}",
            row.baseline_name,
            row.verdict,
            row.notes,
        )
    console.print(table_)


# -- 1. a worker's memory over many operations -------------------------------------------------------


@dataclass
class Sample:
    mark: int  # the multiple of STEP this sample stands for
    ended: int  # operations ended when it was taken
    seconds: float  # since the first operation was sent
    main_kib: int
    pool_kib: dict[int, int]  # pool process id -> its resident memory

    @property
    def total_kib(self) -> int:
        return self.main_kib + sum(self.pool_kib.values())


def resident_kib(pid: int) -> int:
    """The process's resident memory (VmRSS) in KiB, from /proc: Linux only."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise RuntimeError(f"cannot read /proc/{pid}/status (the memory run needs Linux): {exc}") from exc
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line: is process {pid} a zombie?")


def count_ended(engine: Engine) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(table).where(table.c.status.in_(ENDED))
        return int(connection.execute(query).scalar_one())


def memory(operations: int) -> list[Row]:
    with bench() as b:
        b.providers_file(PROVIDERS_FILE)
        worker = b.stack.enter_context(
            running_worker(b.app, b.env, [f"integrations.{PROVIDER}"], b.folder, concurrency=POOL)
        )
        engine = create_ledger_engine(b.env["DATABASE_URL"])
        b.stack.callback(engine.dispose)
        run = uuid.uuid4().hex[:8]
        samples: list[Sample] = []
        sent = ended = 0
        started = progressed = time.monotonic()
        while ended < operations:
            if sent < operations and sent - ended < AHEAD:
                for number in range(sent, min(sent + CHUNK, operations)):
                    b.app.send_task(
                        f"integrations.{PROVIDER}.request",
                        kwargs={
                            "payload": {"method": "POST", "path": "/v1/scale", "json": {"n": number}},
                            "idempotency_key": f"scale-{run}-{number}",
                        },
                        queue=f"integrations.{PROVIDER}",
                    )
                sent = min(sent + CHUNK, operations)
            else:
                time.sleep(0.2)  # polling the ledger's count of ended operations
            now_ended = count_ended(engine)
            if now_ended > ended:
                progressed = time.monotonic()
            elif time.monotonic() - progressed > STALLED:
                raise RuntimeError(
                    f"no operation ended for {STALLED:.0f} s ({ended:,} of {operations:,} ended); the "
                    f"worker's log ({worker.log}) ends with:\n{worker.log_tail()}"
                )
            ended = now_ended
            while len(samples) < operations // STEP and ended >= (len(samples) + 1) * STEP:
                pool = {pid: resident_kib(pid) for pid in worker.children()}
                samples.append(
                    Sample(
                        (len(samples) + 1) * STEP,
                        ended,
                        time.monotonic() - started,
                        resident_kib(worker.process.pid),
                        pool,
                    )
                )
        elapsed = time.monotonic() - started
        with engine.connect() as connection:
            statuses: dict[str, int] = dict(
                connection.execute(select(table.c.status, func.count()).group_by(table.c.status)).all()
            )
        calls = len(b.simulator.calls(path="/v1/scale"))
        database = engine.url.get_backend_name()
    print_samples(samples)
    return memory_rows(samples, operations, elapsed, statuses, calls, database)


def print_samples(samples: list[Sample]) -> None:
    warm = samples[0]
    table_ = Table(
        "operations ended",
        "seconds",
        "ops/s since last",
        "main MiB",
        "pool processes MiB",
        "total MiB",
        "vs warm-up",
        title="worker resident memory (VmRSS)",
    )
    before: Sample | None = None
    for sample in samples:
        rate = (sample.ended - before.ended) / (sample.seconds - before.seconds) if before else 0.0
        pool = "  ".join(f"{pid}:{kib / 1024:.1f}" for pid, kib in sorted(sample.pool_kib.items()))
        table_.add_row(
            f"{sample.ended:,}",
            f"{sample.seconds:.0f}",
            f"{rate:.0f}" if before else "-",
            f"{sample.main_kib / 1024:.1f}",
            pool,
            f"{sample.total_kib / 1024:.1f}",
            "warm-up" if sample is warm else f"{sample.total_kib / warm.total_kib - 1:+.1%}",
        )
        before = sample
    console.print(table_)


def memory_rows(
    samples: list[Sample],
    operations: int,
    elapsed: float,
    statuses: dict[str, int],
    calls: int,
    database: str,
) -> list[Row]:
    warm, last = samples[0], samples[-1]
    after = samples[1:]
    drift = max((abs(s.total_kib / warm.total_kib - 1) for s in after), default=0.0)
    main_drift = max((abs(s.main_kib / warm.main_kib - 1) for s in after), default=0.0)
    # A pool process compared with itself: one replaced since the warm-up has no warm-up figure.
    pool_drift = max(
        (
            abs(kib / warm.pool_kib[pid] - 1)
            for s in after
            for pid, kib in s.pool_kib.items()
            if pid in warm.pool_kib
        ),
        default=0.0,
    )
    replaced = len({pid for s in samples for pid in s.pool_kib} - set(warm.pool_kib))
    succeeded = statuses.get(OperationStatus.SUCCEEDED.value, 0)
    return [
        Row(
            "memory",
            f"worker RSS, main + {POOL} pool processes, at {last.ended:,} ended (MiB)",
            last.total_kib / 1024,
            warm.total_kib / 1024,
            f"the same at {warm.ended:,} (warm-up)",
            "ok" if drift <= MEMORY_TARGET else f"MISSED (target within {MEMORY_TARGET:.0%})",
            f"largest drift after warm-up: total {drift:.1%}, main {main_drift:.1%}, one pool process "
            f"{pool_drift:.1%}; pool processes replaced: {replaced}",
        ),
        Row(
            "memory",
            f"operations succeeded (of {operations:,})",
            succeeded,
            calls,
            "provider calls",
            "ok" if succeeded == operations == calls else "MISSED (every operation succeeds, one call each)",
            f"{operations / elapsed:.0f} operations/s over {elapsed:.0f} s; ledger on {database}; "
            f"statuses {statuses}",
        ),
    ]


# -- the ledgers of parts 2 and 3 ---------------------------------------------------------------------


def databases() -> list[str]:
    """The SQLite file (made by ``ledger_database``), and BENCH_DATABASE_URL when set."""
    return ["sqlite", *filter(None, [os.environ.get("BENCH_DATABASE_URL")])]


@contextmanager
def ledger_database(url: str) -> Iterator[tuple[Engine, str]]:
    """A migrated, empty ledger: a new SQLite file for ``"sqlite"``, else ``url``'s database emptied
    (before and after)."""
    with tempfile.TemporaryDirectory(prefix="integrations-scale-") as folder:
        if url == "sqlite":
            url = f"sqlite:///{Path(folder) / 'ledger.sqlite3'}"
        schema.upgrade(url)
        engine = create_ledger_engine(url)
        name = engine.url.get_backend_name()
        try:
            empty(engine)
            yield engine, name
        finally:
            empty(engine)
            engine.dispose()


def empty(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE operations, webhook_events"))


COLUMNS = (
    "id, provider, operation, idempotency_key, fingerprint, payload, request_id, status, attempts, "
    "replays, version, error, response, created_at, updated_at, started_at, finished_at, next_attempt_at, "
    "waiting, lease_expires_at, items, task_id, swept_at, history, conflicts, last_conflict_at, "
    "discarded_at, discarded_by, discard_reason, reference"
)
DEAD_ERROR = (
    '{"type": "retries_exhausted", "message": "scale.request: gave up after 8 attempts: HTTP 503", '
    '"status_code": 503, "body": {"error": "service unavailable"}}'
)
FAILED_ERROR = (
    '{"type": "provider_rejected", "message": "scale.request: HTTP 422", "status_code": 422, '
    '"body": {"error": {"code": "card_declined", "message": "Your card was declined."}}}'
)


def fill_statement(dialect: str) -> str:
    """``INSERT ... SELECT`` of rows ``:first`` to ``:last`` as the workers would have left them: 2 % dead,
    2 % failed, ``:queued`` % queued, the rest succeeded; four providers in turn; created ``:oldest`` +
    n x ``:spacing`` seconds (Unix time), ended a quarter of a second later (a dead one two minutes)."""
    if dialect == "postgresql":
        series = "generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS n"
        hashes = "md5('id' || n) AS h1, md5('task' || n) AS h2"
        obj, arr, literal = "jsonb_build_object", "jsonb_build_array", "CAST('{}' AS jsonb)"

        def moment(seconds: str) -> str:
            return f"to_timestamp({seconds})"

        def iso(seconds: str) -> str:
            return (
                f"to_char(to_timestamp({seconds}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US+00:00')"
            )

        prefix = ""
    elif dialect == "sqlite":
        series = "counter"
        hashes = "lower(hex(randomblob(16))) AS h1, lower(hex(randomblob(16))) AS h2"
        obj, arr, literal = "json_object", "json_array", "'{}'"

        def moment(seconds: str) -> str:  # SQLAlchemy's SQLite format: microseconds, six digits
            return f"strftime('%Y-%m-%d %H:%M:%f', {seconds}, 'unixepoch') || '000'"

        def iso(seconds: str) -> str:
            return f"strftime('%Y-%m-%dT%H:%M:%f', {seconds}, 'unixepoch') || '000+00:00'"

        prefix = "WITH RECURSIVE counter(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM counter WHERE n < :last) "
    else:
        raise ValueError(f"the ledger runs on PostgreSQL or SQLite, not {dialect}")

    def uuid_of(h: str) -> str:
        return (
            f"substr({h}, 1, 8) || '-' || substr({h}, 9, 4) || '-' || substr({h}, 13, 4) || '-' || "
            f"substr({h}, 17, 4) || '-' || substr({h}, 21, 12)"
        )

    ended = "CASE WHEN status = 'dead' THEN at + 120 ELSE at + 0.25 END"
    outcome_code = "CASE status WHEN 'dead' THEN 503 WHEN 'failed' THEN 422 ELSE 200 END"
    error_type = "CASE status WHEN 'dead' THEN 'retries_exhausted' WHEN 'failed' THEN 'provider_rejected' END"
    values = [
        uuid_of("h1"),  # id
        "provider",
        "'request'",
        "'order-' || n || '-payment'",  # idempotency_key
        "h1 || h2",  # fingerprint
        f"{obj}('method', 'POST', 'path', '/v1/payments', 'json', "
        f"{obj}('amount', n % 100000, 'currency', 'eur', 'customer', 'cus_' || (n % 5000)))",
        "'req-' || h2",  # request_id
        "status",
        "CASE status WHEN 'dead' THEN 8 WHEN 'queued' THEN 0 ELSE 1 END",  # attempts
        "0",  # replays
        "CASE status WHEN 'queued' THEN 1 WHEN 'dead' THEN 17 ELSE 3 END",  # version
        f"CASE status WHEN 'dead' THEN {literal.format(DEAD_ERROR)} "
        f"WHEN 'failed' THEN {literal.format(FAILED_ERROR)} END",  # error
        f"CASE WHEN status = 'succeeded' THEN {obj}('status_code', 200, 'body', "
        f"{obj}('id', 'pi_' || n, 'object', 'payment_intent', 'status', 'succeeded')) END",  # response
        moment("at"),  # created_at
        f"CASE WHEN status = 'queued' THEN {moment('at')} ELSE {moment(ended)} END",  # updated_at
        f"CASE WHEN status = 'queued' THEN NULL ELSE {moment('at + 0.01')} END",  # started_at
        f"CASE WHEN status = 'queued' THEN NULL ELSE {moment(ended)} END",  # finished_at
        f"CASE WHEN status = 'queued' THEN {moment('at + 30')} END",  # next_attempt_at
        "CASE WHEN status = 'queued' THEN 'throttled' END",  # waiting
        "NULL",  # lease_expires_at
        "NULL",  # items
        uuid_of("h2"),  # task_id
        "NULL",  # swept_at
        f"CASE WHEN status = 'queued' THEN NULL ELSE {arr}({obj}('attempt', 1, 'started_at', "
        f"{iso('at + 0.01')}, 'seconds', 0.24, 'outcome', status, 'status_code', {outcome_code}, "
        f"'error_type', {error_type}, 'error', NULL)) END",  # history
        "0",  # conflicts
        "NULL",  # last_conflict_at
        "NULL",  # discarded_at
        "NULL",  # discarded_by
        "NULL",  # discard_reason
        "CASE WHEN status = 'succeeded' AND provider = 'stripe' THEN 'pi_' || n END",  # reference
    ]
    source = (
        "SELECT n, CAST(:oldest AS float) + n * CAST(:spacing AS float) AS at, "
        "CASE WHEN n % 100 < 2 THEN 'dead' WHEN n % 100 < 4 THEN 'failed' "
        "WHEN n % 100 < 4 + :queued THEN 'queued' ELSE 'succeeded' END AS status, "
        "CASE n % 4 WHEN 0 THEN 'acme' WHEN 1 THEN 'stripe' WHEN 2 THEN 'sendgrid' ELSE 'hubspot' END "
        f"AS provider, {hashes} FROM {series}"
    )
    return f"{prefix}INSERT INTO operations ({COLUMNS}) SELECT {', '.join(values)} FROM ({source}) AS s"


def fill(engine: Engine, first: int, count: int, oldest: datetime, newest: datetime, *, queued: int) -> float:
    """Insert rows ``first`` to ``first + count - 1``, created evenly from ``oldest`` to ``newest``, with
    ``queued`` % of them queued; in transactions of 100,000 rows. Returns the seconds it took."""
    statement = text(fill_statement(engine.dialect.name))
    spacing = (newest - oldest).total_seconds() / count
    origin = oldest.timestamp() - first * spacing
    started = time.monotonic()
    for start in range(first, first + count, 100_000):
        last = min(start + 100_000, first + count) - 1
        params = {"first": start, "last": last, "oldest": origin, "spacing": spacing, "queued": queued}
        with engine.begin() as connection:
            connection.execute(statement, params)
    if engine.dialect.name == "postgresql":
        # What autovacuum does soon after a bulk insert: statistics, and the visibility map.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE operations"))
    return time.monotonic() - started


def best(run: Callable[[], Any], repeats: int = REPEATS) -> tuple[float, float]:
    """(best, median) of ``repeats`` runs, in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return min(times), statistics.median(times)


# -- 2. operator commands on a large ledger ------------------------------------------------------------


def refuse_publish(record: OperationRecord) -> str:
    raise RuntimeError(f"the scale benchmark sends nothing (asked to publish {record.id})")


def lookups(engine: Engine, name: str, rows: int) -> list[Row]:
    now = datetime.now(UTC)
    seconds = fill(engine, 0, rows, now - timedelta(days=6), now - timedelta(minutes=1), queued=1)
    with engine.connect() as connection:
        counts: dict[str, int] = dict(
            connection.execute(select(table.c.status, func.count()).group_by(table.c.status)).all()
        )
        middle = rows // 2 // 100 * 100 + 50  # a succeeded row (n % 100 >= 5)
        target = connection.execute(
            select(table.c.id, table.c.provider, table.c.idempotency_key).where(
                table.c.idempotency_key == f"order-{middle}-payment"
            )
        ).one()
    console.print(f"  filled in {seconds:.0f} s: {counts}")
    settings = Settings()
    context = OperatorContext(
        database_url=engine.url.render_as_string(hide_password=False),
        redis_url=settings.state_redis_url,
        providers_file=settings.providers_file,
        retention=settings.retention,
        dead_letter_retention=settings.dead_letter_retention,
        publish=refuse_publish,
    )
    cli = build_cli(lambda: context)

    def command(*args: str, expect: str) -> Callable[[], None]:
        def run() -> None:
            result = CliRunner().invoke(cli, list(args))
            if result.exit_code != 0 or expect not in result.output:
                raise RuntimeError(f"`integrations {' '.join(args)}` failed: {result.output[-2000:]}")

        return run

    ledger = Ledger(engine)
    events = EventStore(engine)
    dead_letters = sum(counts.get(status.value, 0) for status in ENDED_BADLY)

    def show_query() -> None:
        found = ledger.lookup(target.id)
        events.for_operation(found[0].id)

    def key_query() -> None:
        found = ledger.find(target.provider, target.idempotency_key)
        assert found is not None
        events.for_operation(found.id)

    figures = [
        (
            f"ops show ID ({rows:,} rows)",
            command("ops", "show", target.id, expect=target.id),
            show_query,
            SHOW_TARGET_MS,
        ),
        (
            "ops show KEY --provider P",
            command("ops", "show", target.idempotency_key, "--provider", target.provider, expect=target.id),
            key_query,
            SHOW_TARGET_MS,
        ),
        (
            f"dlq list ({dead_letters:,} dead letters, lists 1,000)",
            command("dlq", "list", expect=f"{min(1000, dead_letters)} dead letter(s)"),
            lambda: ledger.dead_letters(limit=1000),
            DLQ_TARGET_MS,
        ),
    ]
    result = []
    for figure, run, query, target_ms in figures:
        ours, ours_median = best(run)
        alone, alone_median = best(query)
        result.append(
            Row(
                f"lookups ({name})",
                f"{figure}, ms",
                ours,
                alone,
                "the ledger's query alone",
                "ok" if ours < target_ms else f"MISSED (target < {target_ms:g} ms)",
                f"best of {REPEATS}, in-process CLI (a new engine each, as a command has); medians: "
                f"command {ours_median:.1f}, query {alone_median:.1f}",
            )
        )
    return result


# -- 3. pruning beside the hot path ------------------------------------------------------------------


@dataclass
class Stream:
    """What the hot-path stream saw: each statement's (monotonic start, seconds, which)."""

    statements: list[tuple[float, float, str]] = field(default_factory=list)

    def within(self, start: float, end: float) -> list[tuple[float, float, str]]:
        return [s for s in self.statements if start <= s[0] <= end]


def hot_path_stream(url: str, rate: float, stop: EventType, ready: EventType, out: Any) -> None:
    """Start and finish new operations at ``rate`` per second until ``stop``, timing each statement;
    put the timings on ``out``. Runs in a process of its own."""
    ledger = Ledger.connect(url)
    run = uuid.uuid4().hex[:8]
    timings: list[tuple[float, float, str]] = []
    payload = {"method": "POST", "path": "/v1/payments", "json": {"amount": 1200, "currency": "eur"}}
    number = 0
    ready.set()
    due = time.monotonic()
    while not stop.is_set():
        key = f"stream-{run}-{number}"
        new = NewOperation(PROVIDER, "request", key, f"fp-{key}", payload, f"req-{key}")
        started = time.monotonic()
        record = ledger.start(new, lease=timedelta(seconds=30))
        between = time.monotonic()
        timings.append((started, between - started, "start"))
        if record is None:
            raise RuntimeError(f"the stream's key {key} was taken: is another stream on {ledger.where}?")
        ledger.finish(record, OperationStatus.SUCCEEDED, response={"status_code": 200, "body": {"id": key}})
        timings.append((between, time.monotonic() - between, "finish"))
        number += 1
        # A steady rate, as workers make it; a stalled stream resumes at the rate, without a burst.
        due = max(due + 1 / rate, time.monotonic())
        stop.wait(max(0.0, due - time.monotonic()))
    ledger.dispose()
    out.put(timings)


def stream_figures(statements: list[tuple[float, float, str]]) -> tuple[float, float, int]:
    """(longest, 99th percentile) in milliseconds, and how many statements."""
    latencies = sorted(s[1] * 1000 for s in statements)
    if not latencies:
        raise RuntimeError("the hot-path stream ran no statement in the window")
    return latencies[-1], latencies[int(0.99 * (len(latencies) - 1))], len(latencies)


def pruning(engine: Engine, name: str, rows: int, batch: int, baseline_seconds: float) -> list[Row]:
    now = datetime.now(UTC)
    settings = Settings()
    retention, dead_retention = settings.retention, settings.dead_letter_retention
    # Every row ended before both retentions: all go. Then 20,000 recent ones (some queued) that stay.
    expired_until = now - max(retention, dead_retention) - timedelta(days=1)
    seconds = fill(engine, 0, rows, expired_until - timedelta(days=60), expired_until, queued=0)
    kept = 20_000
    fill(engine, rows, kept, now - timedelta(days=5), now - timedelta(minutes=1), queued=1)
    console.print(f"  filled in {seconds:.0f} s; the hot-path stream starts ({STREAM_RATE:.0f} operations/s)")
    url = engine.url.render_as_string(hide_password=False)
    spawn = multiprocessing.get_context("spawn")
    stop, ready, out = spawn.Event(), spawn.Event(), spawn.Queue()
    process = spawn.Process(target=hot_path_stream, args=(url, STREAM_RATE, stop, ready, out), daemon=True)
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the hot-path stream did not start within 60 s")
        baseline_from = time.monotonic()
        time.sleep(baseline_seconds)  # the baseline window: the stream alone
        prune_from = time.monotonic()
        ledger = Ledger(engine)
        deleted = ledger.prune(retention=retention, dead_letter_retention=dead_retention, batch=batch)
        prune_until = time.monotonic()
        stop.set()
        stream = Stream(out.get(timeout=60))
        process.join(30)
    finally:
        stop.set()
        if process.is_alive():
            process.terminate()
            process.join()
    with engine.connect() as connection:
        left = int(connection.execute(select(func.count()).select_from(table)).scalar_one())
    streamed = len(stream.statements) // 2
    base_max, base_p99, base_n = stream_figures(stream.within(baseline_from, prune_from))
    ours_max, ours_p99, ours_n = stream_figures(stream.within(prune_from, prune_until))
    prune_seconds = prune_until - prune_from
    slowest = max(stream.within(prune_from, prune_until), key=lambda s: s[1])
    return [
        Row(
            f"prune ({name})",
            f"longest hot-path statement while {deleted:,} rows are pruned, ms",
            ours_max,
            base_max,
            "the same stream, no pruning",
            "ok" if deleted == rows and left == kept + streamed else "MISSED (expired rows go, others stay)",
            f"prune {prune_seconds:.1f} s in batches of {batch:,} ({deleted / prune_seconds:,.0f} rows/s); "
            f"stream p99 {ours_p99:.1f} ms over {ours_n:,} statements (no pruning: {base_p99:.1f} ms "
            f"over {base_n:,} in {prune_from - baseline_from:.0f} s); slowest was a {slowest[2]}; "
            f"{left:,} rows left ({kept:,} recent + {streamed:,} streamed)",
        )
    ]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
