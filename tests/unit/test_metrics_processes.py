"""How worker processes count: into files of their own, named by host and process id, a process forked
after it counted as well as one that never did; and never changing an operation's course, even with a
metrics folder that cannot be written. Each program runs in a fresh interpreter, since prometheus-client
reads PROMETHEUS_MULTIPROC_DIR once, on first import."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess


def run_counting(program: str, metrics: Path) -> subprocess.CompletedProcess[str]:
    """``program`` run by a fresh interpreter counting into ``metrics``; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-c", program],
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics)),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


NEVER_FAILING = """
from integrations.guard import Attempt, Observation
from integrations.metrics import Metrics
from integrations.outcome import Defer, WaitReason
from tests.providers import provider_settings

provider = provider_settings()
attempt = Attempt(provider, "request", None, {}, "key-1", token="t-1")
metrics = Metrics()
for _ in range(3):
    metrics.observe(attempt, Observation(None, 0.1, {}))
    metrics.delivered(provider, "request", Defer(1.0, WaitReason.THROTTLED))
print("went on")
"""


def test_a_metrics_folder_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "metrics"
    not_a_folder.write_text("a file where the folder should be")
    out = run_counting(NEVER_FAILING, not_a_folder)
    assert out.stdout.strip() == "went on"
    assert out.stderr.count("could not be counted") == 1, out.stderr


FORKING = """
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
    parent, child = run_counting(FORKING, tmp_path).stdout.split()
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
