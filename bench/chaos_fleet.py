"""The workers of a chaos scenario, and the ways they are made to die.

Each instance is a real ``celery worker`` started by ``tasks.worker.running_worker``. A pool process can be
SIGKILLed (its worker replaces it), a whole worker SIGKILLed with its pool (and replaced by a new instance),
or stopped with SIGTERM, a warm shutdown (and replaced). ``close`` stops every instance; ``leftovers`` then
looks for any process of theirs still alive, by node name, and kills it by its pid.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

from tasks.worker import WorkerProcess, running_worker


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str


@dataclass
class Fleet:
    """``concurrency``: pool processes per instance (``-c``)."""

    app: Celery
    env: Mapping[str, str]
    queues: Sequence[str]
    folder: Path
    concurrency: int
    rng: random.Random
    workers: list[WorkerProcess] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    _contexts: list[AbstractContextManager[WorkerProcess]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, count: int = 1) -> None:
        """Start ``count`` instances side by side; back once every one answers a ping."""
        failures: list[BaseException] = []

        def one() -> None:
            context = running_worker(
                self.app, self.env, self.queues, self.folder, concurrency=self.concurrency
            )
            try:
                worker = context.__enter__()
            except BaseException as exc:
                failures.append(exc)
                return
            with self._lock:
                self._contexts.append(context)
                self.workers.append(worker)
                self.nodes.append(worker.node)
                self.logs.append(worker.log)

        threads = [threading.Thread(target=one) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def kill_pool_process(self) -> int:
        """SIGKILL one pool process of a random instance; its worker starts another. Returns 1, or 0
        when no instance had a pool process to kill."""
        candidates = [(worker, pid) for worker in list(self.workers) for pid in worker.children()]
        if not candidates:
            return 0
        _worker, pid = self.rng.choice(candidates)
        return _kill(pid)

    def kill_worker(self) -> int:
        """SIGKILL a random instance's main process and its pool at once, then start a new instance.
        Returns how many pool processes died with it."""
        worker = self.rng.choice(self.workers)
        pool = worker.children()
        for pid in pool:
            _kill(pid)
        worker.process.kill()
        worker.process.wait()
        with self._lock:
            self.workers.remove(worker)
        self.start()
        return len(pool)

    def terminate_half(self, timeout: float = 60.0) -> int:
        """SIGTERM half the instances (a warm shutdown: running tasks finish first), start as many new
        ones meanwhile, then wait for the old ones to exit. Returns how many were stopped."""
        stopping = self.rng.sample(self.workers, len(self.workers) // 2)
        for worker in stopping:
            worker.process.send_signal(signal.SIGTERM)
            with self._lock:
                self.workers.remove(worker)
        self.start(len(stopping))
        deadline = time.monotonic() + timeout
        for worker in stopping:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(
                    f"{worker.node} did not stop within {timeout:g}s of SIGTERM:\n{worker.log_tail()}"
                ) from exc
        return len(stopping)

    def close(self) -> None:
        """Stop every instance side by side: a warm shutdown, SIGKILL after 30 s (``running_worker``)."""
        with self._lock:
            contexts, self._contexts = self._contexts, []
        threads = [threading.Thread(target=context.__exit__, args=(None, None, None)) for context in contexts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def leftovers(markers: Sequence[str]) -> list[Leftover]:
    """Processes still alive whose command line holds one of ``markers`` (a worker's node name, a path
    of the scenario's own): each is killed by its pid, and returned."""
    found: list[Leftover] = []
    for marker in markers:
        listed = subprocess.run(["pgrep", "-a", "-f", marker], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            pid, _, command = line.partition(" ")
            found.append(Leftover(int(pid), command))
            _kill(int(pid))
    return found


def _kill(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return 0
    return 1
