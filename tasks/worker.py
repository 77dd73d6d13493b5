"""Starting and stopping a ``celery worker`` process of this project (for the demo and the tests)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery import Celery


@dataclass(frozen=True)
class WorkerProcess:
    process: subprocess.Popen[bytes]
    node: str
    command: list[str]  # as a user would type it
    log: Path

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def log_tail(self, characters: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""


@contextmanager
def running_worker(
    app: Celery,
    env: Mapping[str, str],
    queues: Sequence[str],
    folder: Path,
    *,
    concurrency: int = 2,
    loglevel: str = "WARNING",
    startup_timeout: float = 60.0,
    app_module: str = "config.celery_app",
    python: str = sys.executable,
    heartbeat: bool = False,
) -> Iterator[WorkerProcess]:
    """A worker of ``app_module`` on ``queues``, ready (it answered a ping through ``app``) when the block
    starts, stopped with a warm shutdown when it ends. Its output goes to ``folder/<node>.log``.
    ``python`` is the interpreter it runs on: another environment's, to run the project as installed there.
    ``heartbeat``: the worker sends its heartbeat events, as it does by default; one without them sends task
    events only if INTEGRATIONS_TASK_EVENTS says so (Flower's request for them is not heard)."""
    name = f"worker-{uuid.uuid4().hex[:8]}"
    node = f"{name}@localhost"
    command = ["celery", "-A", app_module, "worker", "-Q", ",".join(queues), "-c", str(concurrency)]
    options = ["-n", node, "--without-gossip", "--without-mingle", "-l", loglevel]
    if not heartbeat:
        options.append("--without-heartbeat")
    log_path = folder / f"{name}.log"
    with log_path.open("wb") as log:
        # Run from `folder`: celery puts the working directory first on sys.path, and a stray "tasks" or
        # "config" folder there would shadow the installed packages.
        process = subprocess.Popen(
            [python, "-m", *command, *options],
            env=dict(env),
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(process, node, command, log_path)
        try:
            deadline = time.monotonic() + startup_timeout
            while not app.control.ping(destination=[node], timeout=0.5):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start:\n{worker.log_tail()}")
            yield worker
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
