"""Counting never changes an operation's course: with a metrics folder that cannot be written, the
pipeline's watcher logs once and lets the attempt go on. Run in a fresh interpreter, since prometheus-client
reads PROMETHEUS_MULTIPROC_DIR once, on first import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = """
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
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(not_a_folder)),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "went on"
    assert out.stderr.count("could not be counted") == 1, out.stderr
