"""The idempotency rules: what a message does given the ledger row for its (provider, key)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from integrations.errors import ErrorType
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.outcome import WaitReason
from integrations.resilience.idempotency import (
    Claim,
    Conflict,
    Exhausted,
    Replay,
    Start,
    Wait,
    decide,
    fingerprint,
)

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
PAYLOAD = {"method": "POST", "path": "/v1/charges", "json": {"amount": 500}}
FINGERPRINT = fingerprint("request", PAYLOAD)
OTHER_FINGERPRINT = fingerprint("request", {**PAYLOAD, "json": {"amount": 501}})


def record(status: OperationStatus, **changes: Any) -> OperationRecord:
    """A ledger row as ``Ledger`` hands it back, for ``decide`` to judge."""
    values: dict[str, Any] = {
        "id": "00000000-0000-0000-0000-000000000001",
        "provider": "acme",
        "operation": "request",
        "idempotency_key": "charge-1",
        "fingerprint": FINGERPRINT,
        "payload": PAYLOAD,
        "request_id": "req-1",
        "status": status,
        "attempts": 1,
        "replays": 0,
        "version": 2,
        "error": None,
        "response": None,
        "created_at": NOW - timedelta(minutes=5),
        "updated_at": NOW - timedelta(minutes=1),
        "started_at": NOW - timedelta(minutes=1),
        "finished_at": NOW - timedelta(minutes=1) if status.terminal else None,
        "next_attempt_at": None,
        "lease_expires_at": None,
        "waiting": None,
    }
    return OperationRecord(**(values | changes))


def error(error_type: ErrorType) -> dict[str, Any]:
    return {"type": str(error_type), "message": "x", "status_code": None, "body": None}


def test_no_record_starts() -> None:
    assert decide(None, FINGERPRINT, NOW) == Start()


@pytest.mark.parametrize("status", list(OperationStatus))
def test_different_request_under_the_same_key_conflicts(status: OperationStatus) -> None:
    existing = record(status, error=error(ErrorType.PROVIDER_REJECTED) if status.terminal else None)

    assert decide(existing, OTHER_FINGERPRINT, NOW) == Conflict(existing)


@pytest.mark.parametrize("request_fingerprint", [OTHER_FINGERPRINT, FINGERPRINT])
def test_valid_request_takes_over_the_key_of_an_invalid_one(request_fingerprint: str) -> None:
    # the same payload too: the message may have been invalid for its other kwargs (an unknown key)
    invalid = record(OperationStatus.FAILED, attempts=0, error=error(ErrorType.INVALID_REQUEST))

    assert decide(invalid, request_fingerprint, NOW) == Claim(invalid, takeover=True)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (OperationStatus.FAILED, ErrorType.PROVIDER_REJECTED),
        (OperationStatus.FAILED, ErrorType.CONTRACT_VIOLATION),
        (OperationStatus.DEAD, ErrorType.INVALID_REQUEST),
        (OperationStatus.DEAD, ErrorType.RETRIES_EXHAUSTED),
    ],
)
def test_only_an_invalid_request_is_taken_over(status: OperationStatus, error_type: ErrorType) -> None:
    existing = record(status, error=error(error_type))

    assert decide(existing, OTHER_FINGERPRINT, NOW) == Conflict(existing)


def test_failed_record_without_error_is_not_taken_over() -> None:
    existing = record(OperationStatus.FAILED, error=None)

    assert decide(existing, OTHER_FINGERPRINT, NOW) == Conflict(existing)


@pytest.mark.parametrize(
    ("status", "changes"),
    [
        (OperationStatus.SUCCEEDED, {"response": {"status_code": 200, "body": {"id": "ch_1"}}}),
        (OperationStatus.FAILED, {"error": error(ErrorType.PROVIDER_REJECTED)}),
        (OperationStatus.DEAD, {"error": error(ErrorType.RETRIES_EXHAUSTED)}),
    ],
)
def test_same_request_after_the_end_replays(status: OperationStatus, changes: dict[str, Any]) -> None:
    ended = record(status, **changes)

    assert decide(ended, FINGERPRINT, NOW) == Replay(ended)


def test_running_with_a_live_lease_waits_for_it() -> None:
    lease = NOW + timedelta(seconds=35)
    running = record(OperationStatus.RUNNING, lease_expires_at=lease)

    assert decide(running, FINGERPRINT, NOW) == Wait(until=lease, reason="in_flight")


@pytest.mark.parametrize("lease", [NOW - timedelta(seconds=1), NOW, None])
def test_running_with_an_expired_lease_is_claimed(lease: datetime | None) -> None:
    running = record(OperationStatus.RUNNING, lease_expires_at=lease)

    assert decide(running, FINGERPRINT, NOW) == Claim(running)


def test_a_lost_last_attempt_ends_the_operation() -> None:
    running = record(OperationStatus.RUNNING, attempts=3, lease_expires_at=NOW - timedelta(seconds=1))

    assert decide(running, FINGERPRINT, NOW, max_attempts=3) == Exhausted(running)
    assert decide(running, FINGERPRINT, NOW, max_attempts=4) == Claim(running)


def test_fingerprint_sees_whole_floats_as_the_integers_a_database_returns() -> None:
    assert fingerprint("request", {"amount": 1e16, "n": [2.0]}) == fingerprint(
        "request", {"amount": 10**16, "n": [2]}
    )
    assert fingerprint("request", {"amount": 1.5}) != fingerprint("request", {"amount": 1})


def test_queued_before_its_next_attempt_waits() -> None:
    due = NOW + timedelta(seconds=4)
    queued = record(OperationStatus.QUEUED, next_attempt_at=due, error=error(ErrorType.PROVIDER_UNAVAILABLE))

    assert decide(queued, FINGERPRINT, NOW) == Wait(until=due, reason="backoff")


@pytest.mark.parametrize("due", [NOW - timedelta(seconds=1), NOW, None])
def test_queued_and_due_is_claimed(due: datetime | None) -> None:
    queued = record(OperationStatus.QUEUED, next_attempt_at=due)

    assert decide(queued, FINGERPRINT, NOW) == Claim(queued)


def test_fingerprint_ignores_key_order() -> None:
    first = {"method": "POST", "path": "/v1/x", "json": {"a": 1, "b": {"c": 2, "d": [1, 2]}}}
    second = {"json": {"b": {"d": [1, 2], "c": 2}, "a": 1}, "path": "/v1/x", "method": "POST"}

    assert fingerprint("request", first) == fingerprint("request", second)
    assert len(fingerprint("request", first)) == 64  # fits the ledger's fingerprint column


@pytest.mark.parametrize(
    ("operation", "payload"),
    [
        ("charge", PAYLOAD),
        ("request", {**PAYLOAD, "json": {"amount": 501}}),
        ("request", {**PAYLOAD, "json": {"amount": "500"}}),
        ("request", {**PAYLOAD, "path": "/v1/refunds"}),
        ("request", {**PAYLOAD, "json": [{"amount": 500}]}),
        ("request", None),
    ],
)
def test_fingerprint_differs_by_operation_and_payload(operation: str, payload: Any) -> None:
    assert fingerprint(operation, payload) != FINGERPRINT


def test_fingerprint_list_order_matters() -> None:
    assert fingerprint("request", {"items": [1, 2]}) != fingerprint("request", {"items": [2, 1]})


def test_a_wait_reason_this_code_does_not_know_is_waited_out_as_a_backoff() -> None:
    due = NOW + timedelta(seconds=30)
    queued = record(OperationStatus.QUEUED, waiting="maintenance", next_attempt_at=due)
    decision = decide(queued, FINGERPRINT, NOW)
    assert decision == Wait(due, WaitReason.BACKOFF)
