"""Replaying a dead letter (``integrations dlq replay``): which operations may go again, and how.

The ledger stores and reads; what a replay resets, and which items of a batch go again, is decided here
with the batch rules.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from integrations import batch
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger


@dataclass(frozen=True)
class ServedOperations:
    """What the workers can run: each provider of the providers file (``where``) with its adapter's
    operations. A replayed message of anything else would be taken by no worker, or dropped."""

    operations: Mapping[str, Collection[str]]
    where: str

    def refuse_unserved(self, record: OperationRecord) -> None:
        """Raise ``LookupError`` naming ``record``'s provider or operation when no worker serves it."""
        name = f"operation {record.id} ({record.provider}.{record.operation})"
        served = self.operations.get(record.provider)
        if served is None:
            known = ", ".join(sorted(self.operations)) or "none"
            raise LookupError(
                f"{name} was not replayed: provider {record.provider!r} is not in the providers file "
                f"{self.where} (it has: {known}), so no worker would take its message. Add "
                f"[providers.{record.provider}] back to the providers file, then replay it; the row is "
                "left as it was"
            )
        if record.operation not in served:
            known = ", ".join(sorted(served)) or "none"
            raise LookupError(
                f"{name} was not replayed: provider {record.provider!r} in {self.where} has no operation "
                f"{record.operation!r} (its adapter has: {known}), so no worker would run its message. "
                "Give the provider an adapter that has it, then replay it; the row is left as it was"
            )


def reset_for_replay(
    ledger: Ledger, operation_id: str, served: ServedOperations | None = None
) -> tuple[OperationRecord, OperationRecord]:
    """Make a failed, dead or partial operation queued again with a fresh attempt budget; returns the row
    before and after. A batch sends again only its items that did not succeed (invalid items stay
    failed: they would be again). With ``served``, an operation no worker serves is refused before the
    row changes."""
    record = ledger.get(operation_id)
    if record is None:
        raise LookupError(f"no operation {operation_id!r} in the ledger at {ledger.where}")
    if not record.status.ended_badly:
        raise ValueError(
            f"operation {operation_id} is {record.status.value}; only failed, dead or partial ones replay"
        )
    if served is not None:
        served.refuse_unserved(record)
    if record.invalid_request:
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
