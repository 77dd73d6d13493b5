"""Replaying a dead letter (``integrations dlq replay``): which operations may go again, and how.

The ledger stores and reads; what a replay resets, and which items of a batch go again, is decided here
with the batch rules.
"""

from __future__ import annotations

from integrations import batch
from integrations.errors import ErrorType
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger


def reset_for_replay(ledger: Ledger, operation_id: str) -> tuple[OperationRecord, OperationRecord]:
    """Make a failed, dead or partial operation queued again with a fresh attempt budget; returns the row
    before and after. A batch sends again only its items that did not succeed (invalid items stay
    failed: they would be again)."""
    record = ledger.get(operation_id)
    if record is None:
        raise LookupError(f"no operation {operation_id!r} in the ledger at {ledger.where}")
    if not record.status.ended_badly:
        raise ValueError(
            f"operation {operation_id} is {record.status.value}; only failed, dead or partial ones replay"
        )
    if record.error and record.error.get("type") == ErrorType.INVALID_REQUEST:
        raise ValueError(
            f"operation {operation_id} was an invalid request; the same message would fail again: "
            "fix the payload and send it again"
        )
    items = None
    if record.items is not None:
        items = batch.for_replay(record.items)
        if not batch.next_chunk(items, len(items)):
            raise ValueError(
                f"operation {operation_id}: every item that did not succeed was invalid; the same items "
                "would fail again: fix them and send them in a new operation"
            )
    queued = ledger.requeue(record, items=items)
    if queued is None:
        raise ValueError(f"operation {operation_id} changed while it was being replayed; try again")
    return record, queued
