"""``integrations.client.enqueue`` from an application's own process, with the workers' environment, to a
real worker: the caller reads the outcome with ``AsyncResult(handle.task_id)`` as after ``send_task``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from integrations.ledger.models import OperationStatus
from integrations.testing.provider import ProviderSimulator
from tests.e2e.conftest import Worker, unique

APPLICATION = """
import json, sys
from integrations.client import enqueue
from integrations.errors import IdempotencyConflict

key, path = sys.argv[1], sys.argv[2]
payload = {"method": "POST", "path": path, "json": {"amount": 1200}}
first = enqueue("sim", "request", payload=payload, idempotency_key=key)
again = enqueue("sim", "request", payload=payload, idempotency_key=key)
try:
    enqueue("sim", "request", payload={**payload, "json": {"amount": 1}}, idempotency_key=key)
    conflict = None
except IdempotencyConflict as exc:
    conflict = str(exc)
print(json.dumps({"first": first.__dict__, "again": again.__dict__, "conflict": conflict}))
"""


def test_an_enqueued_operation_runs_once_and_its_caller_reads_the_outcome(
    worker: Worker, sim: ProviderSimulator, tmp_path: Path
) -> None:
    key = unique("enqueue")
    out = subprocess.run(
        [sys.executable, "-c", APPLICATION, key, "/v1/payments"],
        env=worker.env,
        cwd=tmp_path,  # an application's own folder, not the checkout
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    said = json.loads(out.stdout)

    value = worker.app.AsyncResult(said["first"]["task_id"]).get(timeout=30)
    assert value["status"] == "succeeded" and value["operation_id"] == said["first"]["operation_id"]
    assert said["again"] == said["first"] | {"created": False}
    assert said["conflict"] is not None and "already used by operation" in said["conflict"]
    assert len(sim.calls(idempotency_key=key)) == 1
    record = worker.ledger.find("sim", key)
    assert record is not None and record.status is OperationStatus.SUCCEEDED
    assert record.task_id == said["first"]["task_id"]
