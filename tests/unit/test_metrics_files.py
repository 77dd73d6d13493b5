"""Each process counts into files of its own, named by host and process id, a process forked after it
counted as well as one that never did; what they counted adds up. Run in a fresh interpreter, since
prometheus-client reads PROMETHEUS_MULTIPROC_DIR once, on first import."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

PROGRAM = """
import os
from integrations.guard import Attempt, Observation
from integrations.metrics import Metrics
from tests.providers import provider_settings

provider = provider_settings(name="counted")
attempt = Attempt(provider, "request", None, {}, "key-1", token="t-1")
metrics = Metrics()
metrics.observe(attempt, Observation(None, 0.1, {}))
child = os.fork()
if child == 0:
    metrics.observe(attempt, Observation(None, 0.1, {}))
    metrics.observe(attempt, Observation(None, 0.1, {}))
    os._exit(0)
os.waitpid(child, 0)
print(os.getpid(), child)
"""


def test_a_forked_process_counts_into_its_own_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    parent, child = out.stdout.split()
    host = socket.gethostname().replace("_", "-")
    assert {file.name for file in tmp_path.glob("counter_*.db")} == {
        f"counter_{host}-{parent}.db",
        f"counter_{host}-{child}.db",
    }
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    attempts = registry.get_sample_value(
        "integrations_attempts_total",
        {"provider": "counted", "operation": "request", "result": "succeeded"},
    )
    assert attempts == 3
