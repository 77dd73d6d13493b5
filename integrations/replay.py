"""Dead letters (``integrations dlq``): which operations may go again and how (``replay``, by id or by
filter), and settling one for good (``discard``).

The ledger stores and reads; what a replay resets, and which items of a batch go again, is decided here
with the batch rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from integrations import batch
from integrations.ledger.records import ActionRecord, OperationRecord
from integrations.ledger.store import Ledger

# A replay by filter names at most this many operations in its error messages; the count is always whole.
NAMED_AT_MOST = 10


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

    def serves(self, record: OperationRecord) -> bool:
        return record.operation in self.operations.get(record.provider, ())


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a replay by filter takes: of ``provider``, whose error is of ``error_type``,
    that ended since ``since``. Discarded ones never."""

    provider: str | None = None
    error_type: str | None = None
    since: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.provider is None and self.error_type is None and self.since is None

    def to_json(self) -> dict[str, str]:
        shown = {"provider": self.provider, "error_type": self.error_type}
        shown["since"] = self.since.isoformat() if self.since else None
        return {name: value for name, value in shown.items() if value is not None}

    def __str__(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.to_json().items())


@dataclass(frozen=True)
class Selection:
    """The dead letters a filter matched: those a replay would send, and those it would leave, with why."""

    replayable: list[OperationRecord] = field(default_factory=list)
    left: list[tuple[OperationRecord, str]] = field(default_factory=list)
    more: bool = False  # the filter matched more than the limit: another run takes the rest

    def by_operation(self) -> dict[str, int]:
        """How many of the replayable ones each ``provider.operation`` has."""
        return dict(sorted(Counter(record.where for record in self.replayable).items()))


def why_not_replayable(record: OperationRecord) -> str | None:
    """Why the same message would surely fail again, or why ``record`` is no dead letter; ``None`` when it
    may be replayed."""
    if not record.status.ended_badly:
        return f"it is {record.status.value}; only failed, dead or partial ones replay"
    if record.invalid_request:
        return (
            "it was an invalid request; the same message would fail again: fix the payload and send it again"
        )
    if record.items is not None and not batch.next_chunk(batch.for_replay(record.items), len(record.items)):
        return (
            "every item that did not succeed was invalid; the same items would fail again: fix them and "
            "send them in a new operation"
        )
    return None


def select_for_replay(
    ledger: Ledger, which: DeadLetterFilter, served: ServedOperations, *, limit: int
) -> Selection:
    """The dead letters ``which`` matches (at most ``limit``), sorted into replayable and left.

    Raises ``LookupError`` naming the providers and operations no worker serves when any matched
    operation is of one, before anything changes: a filter is narrowed (``--provider``) or the providers
    file completed, never half applied."""
    found = ledger.dead_letters(
        which.provider, limit=limit + 1, error_type=which.error_type, since=which.since
    )
    more, found = len(found) > limit, found[:limit]
    unserved = [record for record in found if not served.serves(record)]
    if unserved:
        raise LookupError(_unserved_message(unserved, which, served))
    selection = Selection(more=more)
    for record in found:
        why = why_not_replayable(record)
        if why is None:
            selection.replayable.append(record)
        else:
            selection.left.append((record, why))
    return selection


def _unserved_message(
    unserved: list[OperationRecord], which: DeadLetterFilter, served: ServedOperations
) -> str:
    counts = Counter(record.where for record in unserved)
    kinds = ", ".join(f"{where} ({count})" for where, count in sorted(counts.items()))
    named = ", ".join(record.id for record in unserved[:NAMED_AT_MOST])
    if len(unserved) > NAMED_AT_MOST:
        named += f" and {len(unserved) - NAMED_AT_MOST} more"
    known = "; ".join(f"{name}: {', '.join(sorted(ops))}" for name, ops in sorted(served.operations.items()))
    return (
        f"nothing was replayed: the filter {which} matches {len(unserved)} operation(s) that no worker "
        f"serves, as the providers file {served.where} has no such provider or operation: {kinds} "
        f"(operations {named}). It serves {known or 'nothing'}. Narrow the filter (--provider, "
        "--error-type, --since), or put them back in the providers file; no row was changed"
    )


def reset_for_replay(
    ledger: Ledger, operation_id: str, served: ServedOperations | None = None
) -> tuple[OperationRecord, OperationRecord]:
    """Make a failed, dead or partial operation queued again with a fresh attempt budget; returns the row
    before and after. A batch sends again only its items that did not succeed (invalid items stay
    failed: they would be again). With ``served``, an operation no worker serves is refused before the
    row changes. A discarded one named by id is replayed, and no longer discarded."""
    record = dead_letter(ledger, operation_id, "replay")
    if served is not None:
        served.refuse_unserved(record)
    why = why_not_replayable(record)
    if why is not None:
        raise ValueError(f"operation {operation_id} was not replayed: {why}")
    items = batch.for_replay(record.items) if record.items is not None else None
    queued = ledger.requeue(record, items=items)
    if queued is None:
        raise ValueError(f"operation {operation_id} changed while it was being replayed; try again")
    return record, queued


def dead_letter(ledger: Ledger, operation_id: str, what: str) -> OperationRecord:
    """The failed, dead or partial operation ``operation_id``; else an error saying only those ``what``."""
    record = ledger.get(operation_id)
    if record is None:
        raise LookupError(f"no operation {operation_id!r} in the ledger at {ledger.where}")
    if not record.status.ended_badly:
        raise ValueError(
            f"operation {operation_id} is {record.status.value}; only failed, dead or partial ones {what}"
        )
    return record


def discard(
    ledger: Ledger, operation_id: str, *, actor: str, reason: str
) -> tuple[OperationRecord, ActionRecord]:
    """Settle the dead letter ``operation_id`` for good: out of ``dlq list`` and filtered replays, its row
    and key kept (a message sent again with its key gets its stored failure, no call). Recorded with
    ``actor`` and ``reason``."""
    if not reason.strip():
        raise ValueError(
            f'operation {operation_id} was not discarded: give the reason (--reason "..."), which '
            "`ops show` and `audit list` keep"
        )
    record = dead_letter(ledger, operation_id, "(dead letters) can be discarded")
    if record.discarded_at is not None:
        raise ValueError(
            f"operation {operation_id} was already discarded at {record.discarded_at.isoformat()} by "
            f"{record.discarded_by}: {record.discard_reason}"
        )
    done = ledger.discard(record, actor=actor, reason=reason.strip())
    if done is None:
        raise ValueError(f"operation {operation_id} changed while it was being discarded; try again")
    return done
