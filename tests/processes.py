"""Running one function in many processes at once, for tests of what crosses processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def at_once(target: Callable[..., Any], count: int, *args: Any, timeout: float = 60) -> list[Any]:
    """Start ``count`` fresh processes running ``target(start, results, *args)``, release them together
    (``start.wait()`` in the target), and return what each put on ``results``."""
    context = multiprocessing.get_context("spawn")  # nothing inherited: no shared sockets or threads
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=target, args=(start, results, *args)) for _ in range(count)]
    for process in processes:
        process.start()
    start.set()
    collected = [results.get(timeout=timeout) for _ in processes]
    for process in processes:
        process.join(timeout=timeout)
    return collected
