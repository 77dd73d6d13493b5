"""`make bench`: the four benchmarks of the cluster-wide breaker and throttle, each beside a baseline
measured in the same run on this machine, and the webhook receiver beside a bare endpoint.
`python -m bench [rate|outage|overhead|isolation|receiver]` runs some."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import handrolled_app
from bench.harness import OVERHEAD_FLEETS, SQLITE_LEDGER, Row, bench, wait_all
from bench.receiver import receiver

console = Console(width=170)
WORKERS = 4


def _rate(calls: list[float]) -> float:
    return (len(calls) - 1) / (calls[-1] - calls[0]) if len(calls) > 1 else 0.0


def rate_accuracy() -> list[Row]:
    """4 worker processes, limit 20/s, a provider that answers 429 over 20 in any sliding second.

    Steady state starts once every operation has been taken in (the last first delivery, from the
    ledger); before it, the workers are busy deferring the backlog of 600 operations."""
    n, limit = 600, 20
    figures: dict[str, tuple[int, int, float, float]] = {}

    def measure(calls: list[Any], steady_from: float) -> tuple[int, int, float, float]:
        ok = [c.received_at for c in calls if c.status == 200]
        steady = [c for c in calls if c.received_at >= steady_from]
        steady_ok = [c.received_at for c in steady if c.status == 200]
        rejected = sum(c.status == 429 for c in calls)
        return rejected, sum(c.status == 429 for c in steady), _rate(ok) / limit, _rate(steady_ok) / limit

    with bench() as b:
        b.simulator.set_rate_limit(limit, window=1.0)
        b.providers_file(
            '[providers.limited]\nadapter = "http"\nbase_url = "{url}"\nrate_limit = "20/s"\nburst = 1\n'
            "[providers.limited.retry]\nmax_attempts = 8\nbackoff_base = 0.5\nbackoff_max = 5.0\n"
        )
        b.fleet(["integrations.limited"], WORKERS)
        wait_all(b.send("limited", "/v1/rate", n))
        figures["ours"] = measure(b.simulator.calls(path="/v1/rate"), b.last_taken_in())
    with bench() as b:
        b.simulator.set_rate_limit(limit, window=1.0)
        b.fleet(["bench.baseline"], WORKERS, app_module="bench.baseline_app")
        wait_all(b.send_baseline("bench.rate_limited_call", "/v1/rate", n))
        calls = b.simulator.calls(path="/v1/rate")
        figures["base"] = measure(calls, calls[0].received_at + 5.0)
    ours, base = figures["ours"], figures["base"]
    return [
        Row(
            "rate accuracy",
            "429s at steady state",
            ours[1],
            base[1],
            "Celery rate_limit='20/s'",
            "ok" if ours[1] == 0 else "MISSED (target 0)",
            f"whole run: ours {ours[0]}, baseline {base[0]}",
        ),
        Row(
            "rate accuracy",
            "utilization at steady state",
            ours[3],
            base[3],
            "Celery rate_limit='20/s'",
            "ok" if ours[3] >= 0.95 else "MISSED (target >= 0.95)",
            f"whole run: ours {ours[2]:.2f}, baseline {base[2]:.2f} (its 429s are lost operations)",
        ),
    ]


def outage() -> list[Row]:
    """The provider answers 503 for 20 s; 4 workers; 200 operations."""
    n, seconds = 200, 20.0
    figures: dict[str, tuple[int, int]] = {}

    def run(send: Callable[[], list], b: object) -> tuple[int, int]:
        simulator = b.simulator  # type: ignore[attr-defined]
        simulator.set_outage(503)
        timer = threading.Timer(seconds, simulator.set_outage, args=[None])
        timer.start()
        results = send()
        ok, _failed = wait_all(results, timeout=600)
        timer.join()
        during = sum(c.status == 503 for c in simulator.calls(path="/v1/outage"))
        return during, ok

    with bench() as b:
        b.providers_file(
            '[providers.flaky]\nadapter = "http"\nbase_url = "{url}"\n'
            "[providers.flaky.breaker]\nfail_max = 5\nreset_timeout = 5.0\n"
            "[providers.flaky.retry]\nmax_attempts = 8\nbackoff_base = 1.0\nbackoff_max = 30.0\n"
        )
        b.fleet(["integrations.flaky"], WORKERS)
        figures["ours"] = run(lambda: b.send("flaky", "/v1/outage", n), b)
    with bench() as b:
        b.fleet(["bench.baseline"], WORKERS, app_module="bench.baseline_app")
        figures["base"] = run(lambda: b.send_baseline("bench.autoretry_call", "/v1/outage", n), b)
    ours, base = figures["ours"], figures["base"]
    target = 5 + seconds / 5.0
    return [
        Row(
            "outage",
            "calls during the 20 s outage",
            ours[0],
            base[0],
            "Celery autoretry_for + backoff",
            "ok" if ours[0] <= target else f"MISSED (target <= {target:g})",
        ),
        Row(
            "outage",
            f"operations succeeded (of {n})",
            ours[1],
            base[1],
            "Celery autoretry_for + backoff",
            "ok" if ours[1] == n else "MISSED",
        ),
    ]


def overhead() -> list[Row]:
    """Operations per second through the whole pipeline vs a bare task making the same HTTP call, vs the
    hand-rolled alternative (bench.handrolled_app) and vs the floor (bench.floor_app), each on four worker
    processes of its own: on the SQLite ledger, and on PostgreSQL too when BENCH_DATABASE_URL names one."""
    rows = _overhead_on("SQLite", SQLITE_LEDGER)
    postgres = os.environ.get("BENCH_DATABASE_URL")
    if postgres:
        rows += _overhead_on("PostgreSQL", postgres)
    return rows


def _overhead_on(ledger: str, database: str) -> list[Row]:
    """Rounds of ``n`` operations; each round runs the fleets in turn, starting one further along each
    round, so position in the round hits all alike. This machine's speed drifts over minutes (its two
    cores are shared with Redis, the ledger, the simulator and the client, and with the host), so the
    ratios are taken within each round, from runs a few seconds apart, and their median reported beside
    the median rates. Both throttles are set far above what is reached: each is asked on every call and
    never says wait."""
    n, rounds = 500, 7
    with bench(database) as b:
        b.providers_file(
            '[providers.fast]\nadapter = "http"\nbase_url = "{url}"\n'
            f'rate_limit = "{handrolled_app.RATE_PER_SECOND}/s"\n'
        )
        runs = {name: b.overhead_fleet(name, WORKERS) for name in OVERHEAD_FLEETS}
        for send in runs.values():  # connections made and scripts loaded, as in a worker that has run
            wait_all(send(100))
        rates: dict[str, list[float]] = {name: [] for name in runs}
        failed = dict.fromkeys(runs, 0)
        names = list(runs)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                started = time.monotonic()
                failed[name] += wait_all(runs[name](n))[1]
                rates[name].append(n / (time.monotonic() - started))

    def ratio(fleet: str, to: str) -> float:
        return median(a / b for a, b in zip(rates[fleet], rates[to], strict=True))

    rounds_note = "; ".join(f"{name} {', '.join(f'{x:.0f}' for x in rates[name])}" for name in names)
    invalid = ", ".join(f"{name} {count}" for name, count in failed.items() if count)

    def verdict(ok: bool, target: str) -> str:
        if invalid:
            return f"INVALID (operations failed: {invalid})"
        return "ok" if ok else f"MISSED (target {target})"

    figure = f"operations per second ({ledger} ledger)"
    mine = median(rates["ours"])
    return [
        Row(
            "overhead",
            figure,
            mine,
            median(rates["bare"]),
            "bare Celery task, same HTTP call",
            verdict(ratio("ours", "bare") >= 0.8, "ratio >= 0.8"),
            f"ratio {ratio('ours', 'bare'):.2f} (median of the rounds' ratios); rounds: {rounds_note}",
        ),
        Row(
            "overhead",
            figure,
            mine,
            median(rates["hand-rolled"]),
            "hand-rolled: autoretry, pybreaker and limits in Redis, idempotency row in SQL",
            verdict(ratio("ours", "hand-rolled") > 1, "ratio > 1"),
            f"ratio {ratio('ours', 'hand-rolled'):.2f} (median of the rounds' ratios)",
        ),
        Row(
            "overhead",
            figure,
            mine,
            median(rates["floor"]),
            "floor: bare task + 2 statements and 2 Redis scripts on the raw drivers (bench.floor_app)",
            "reference",
            f"ratio {ratio('ours', 'floor'):.2f}; the floor's own to bare: {ratio('floor', 'bare'):.2f}, "
            "about the most any implementation of the promises could reach here",
        ),
    ]


def isolation() -> list[Row]:
    """Provider A throttled to 2/s with 200 operations waiting; provider B's throughput on the same four
    workers beside B alone: three rounds of each (alone first, then with A's backlog), medians."""
    n_a, n_b, rounds = 200, 600, 3
    alone: list[float] = []
    beside: list[float] = []
    with bench() as b:
        b.providers_file(
            '[providers.slow-a]\nadapter = "http"\nbase_url = "{url}"\nrate_limit = "2/s"\nburst = 1\n'
            '[providers.free-b]\nadapter = "http"\nbase_url = "{url}"\n'
        )
        b.fleet(["integrations.slow-a", "integrations.free-b"], WORKERS)
        for _ in range(rounds):
            started = time.monotonic()
            wait_all(b.send("free-b", "/v1/b", n_b))
            alone.append(n_b / (time.monotonic() - started))
        waiting = b.send("slow-a", "/v1/a", n_a)
        for _ in range(rounds):
            started = time.monotonic()
            wait_all(b.send("free-b", "/v1/b", n_b))
            beside.append(n_b / (time.monotonic() - started))
        a_done = len(b.simulator.calls(path="/v1/a"))
        for result in waiting:
            result.revoke()
    mine, theirs = median(beside), median(alone)
    return [
        Row(
            "isolation",
            "provider B operations per second",
            mine,
            theirs,
            "B alone on the same workers",
            "ok" if mine / theirs >= 0.9 else "MISSED (target ratio >= 0.9)",
            f"ratio {mine / theirs:.2f}; A made {a_done} calls meanwhile (2/s); rounds: beside "
            f"{', '.join(f'{x:.0f}' for x in beside)}, alone {', '.join(f'{x:.0f}' for x in alone)}",
        )
    ]


BENCHMARKS: dict[str, Callable[[], list[Row]]] = {
    "rate": rate_accuracy,
    "outage": outage,
    "overhead": overhead,
    "isolation": isolation,
    "receiver": lambda: _in_folder(receiver),
}


def _in_folder(benchmark: Callable[[Path], list[Row]]) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="integrations-bench-") as folder:
        return benchmark(Path(folder))


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        usage = f"usage: python -m bench [{'|'.join(BENCHMARKS)} ...] (all when none is named)"
        if set(unknown) <= {"-h", "--help"}:
            console.print(usage, markup=False)
            return 0
        console.print(f"{usage}; there is no benchmark {', '.join(map(repr, unknown))}", markup=False)
        return 2
    rows: list[Row] = []
    for name in chosen:
        console.print(f"running {name} ...")
        rows += BENCHMARKS[name]()
    table = Table("benchmark", "figure", "ours", "baseline", "baseline is", "target", "notes")
    for row in rows:
        table.add_row(
            row.name,
            row.figure,
            f"{row.ours:g}" if isinstance(row.ours, int) else f"{row.ours:.3g}",
            f"{row.baseline:.3g}",
            row.baseline_name,
            row.verdict,
            row.notes,
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
