"""Where an operation's CPU goes: ``python -m bench.cpu [ours|bare|hand-rolled|floor ...] [--operations N]``.

One fleet at a time (four worker processes, as ``python -m bench overhead`` runs them) drains N operations;
the CPU time (user and system, from /proc) that every process of the machine spent meanwhile is summed by
kind: the workers' main processes, their pool processes, Redis, PostgreSQL, this process (the client and
the provider simulator, which runs in it) and the rest. Divided by N: milliseconds of CPU per operation.
On a machine whose cores are all busy, the throughput of a fleet is the cores over this total.

To see inside a pool process, attach a sampling profiler to it while this runs, e.g.
``py-spy record --gil --pid <pool pid> -f raw -o pool.txt`` (``--gil``: the samples that hold Python's lock,
its own work; C code that releases the lock, a database driver's I/O, is left out).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from rich.console import Console
from rich.table import Table

from bench.harness import OVERHEAD_FLEETS, bench, wait_all

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = 4


def cpu_seconds() -> dict[int, tuple[str, int, float]]:
    """Every process of the machine: pid -> (command line, parent pid, user + system CPU seconds)."""
    found: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        found[int(entry)] = (command, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def kind(pid: int, processes: dict[int, tuple[str, int, float]]) -> str:
    command, parent, _ = processes[pid]
    if pid == os.getpid():
        return "client and simulator (this process)"
    if "celery" in command:
        return (
            "worker pool processes"
            if "celery" in processes.get(parent, ("", 0, 0.0))[0]
            else "worker main processes"
        )
    if "redis-server" in command:
        return "Redis"
    if "postgres" in command:
        return "PostgreSQL"
    return "the rest"


def measure(name: str, operations: int) -> tuple[float, Counter[str]]:
    from bench import handrolled_app

    with bench() as b:
        b.providers_file(
            '[providers.fast]\nadapter = "http"\nbase_url = "{url}"\n'
            f'rate_limit = "{handrolled_app.RATE_PER_SECOND}/s"\n'
        )
        send = b.overhead_fleet(name, WORKERS)
        wait_all(send(200))  # connections made, scripts loaded
        before = cpu_seconds()
        started = time.monotonic()
        failed = wait_all(send(operations))[1]
        elapsed = time.monotonic() - started
        after = cpu_seconds()
    if failed:
        raise SystemExit(f"{name}: {failed} of {operations} operations failed")
    spent: Counter[str] = Counter()
    for pid, (_command, _parent, seconds) in after.items():
        spent[kind(pid, after)] += seconds - before.get(pid, ("", 0, 0.0))[2]
    return operations / elapsed, spent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "fleets",
        nargs="*",
        choices=OVERHEAD_FLEETS,
        default=list(OVERHEAD_FLEETS),
        help="the fleets measured, in turn",
    )
    parser.add_argument("--operations", type=int, default=3000)
    options = parser.parse_args(argv)
    table = Table("fleet", "operations/s", "CPU ms per operation, by process kind", "total")
    for name in options.fleets:
        rate, spent = measure(name, options.operations)
        shares = ", ".join(
            f"{what} {1000 * seconds / options.operations:.2f}"
            for what, seconds in spent.most_common()
            if seconds > 0.005 * options.operations / 1000
        )
        table.add_row(name, f"{rate:.0f}", shares, f"{1000 * sum(spent.values()) / options.operations:.2f}")
    Console(width=170).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
