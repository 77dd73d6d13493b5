"""What the project's own publishing (replay, the sweeper, ``enqueue``) puts in the broker: the message a
worker runs, with headers that show what it asks for and never its payload (Celery's "task-sent" event and
Flower show those headers)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import redis
from celery import Celery

from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from tasks.enqueue import send

CARD = "4242424242424242"


def test_a_sent_message_carries_its_payload_in_its_body_only(redis_url: str) -> None:
    now = datetime.now(UTC)
    record = OperationRecord(
        id="op-1",
        provider="acme",
        operation="request",
        idempotency_key="order-1",
        fingerprint="f",
        payload={"method": "POST", "path": "/v1/payments", "json": {"card": CARD}},
        request_id="req-1",
        status=OperationStatus.QUEUED,
        attempts=0,
        replays=0,
        version=1,
        error=None,
        response=None,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        next_attempt_at=None,
        waiting=None,
        lease_expires_at=None,
    )
    app = Celery("sender", broker=redis_url, set_as_current=False)
    try:
        task_id = send(app, record, "task-1")
    finally:
        app.close()

    raw = redis.Redis.from_url(redis_url).lpop("integrations.acme")
    assert raw is not None and task_id == "task-1"
    message = json.loads(raw)
    headers = message["headers"]
    assert CARD not in json.dumps(headers)
    assert "'idempotency_key': 'order-1'" in headers["kwargsrepr"] and headers["argsrepr"] == "()"
    _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))  # what the worker runs
    assert kwargs["payload"] == record.payload and kwargs["idempotency_key"] == "order-1"
