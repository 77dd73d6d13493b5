"""Step 6 of a delivery: the end of an attempt written to the ledger, logged, and turned into an Outcome.

Every write compares the row's version: ``None`` from the ledger means another worker took the operation
over after our lease ran out, and its outcome is the one that counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from integrations import batch
from integrations.errors import ErrorInfo, OperationError, last_attempt_lost
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import Items, OperationRecord
from integrations.ledger.store import Clock, Ledger
from integrations.outcome import Defer, Done, Failed, Outcome, WaitReason, poll_delay, result
from integrations.resilience.retry import GiveUp

log = logging.getLogger("integrations.operations")


@dataclass(frozen=True)
class Recorder:
    ledger: Ledger
    clock: Clock

    def succeeded(self, claimed: OperationRecord, response: Any) -> Outcome:
        finished = self.ledger.finish(claimed, OperationStatus.SUCCEEDED, response=response)
        if finished is None:
            return self.taken_over(claimed)
        log.info(
            "succeeded %s key=%s attempts=%d", finished.where, finished.idempotency_key, finished.attempts
        )
        return Done(result(finished, replayed=False))

    def queued(
        self,
        claimed: OperationRecord,
        error: ErrorInfo | None,
        delay: float | None,
        items: Items | None = None,
    ) -> bool:
        """The operation waits for its next attempt, ``delay`` seconds from now (``None``: at once, as a
        batch's next chunk does); False if another worker took it over meanwhile."""
        due = None if delay is None else self.clock() + timedelta(seconds=delay)
        finished = self.ledger.finish(
            claimed, OperationStatus.QUEUED, error=error, next_attempt_at=due, items=items
        )
        return finished is not None

    def gave_up(self, claimed: OperationRecord, verdict: GiveUp) -> Outcome:
        finished = self.ledger.finish(claimed, verdict.status, error=verdict.error)
        if finished is None:
            return self.taken_over(claimed)
        log.warning(
            "%s %s key=%s operation_id=%s: %s",
            verdict.status.value,
            claimed.where,
            claimed.idempotency_key,
            claimed.id,
            verdict.error.message,
        )
        return Failed(verdict.status, verdict.error, claimed.id)

    def settled(
        self,
        record: OperationRecord,
        items: Items,
        status: OperationStatus | None = None,
        error: ErrorInfo | None = None,
    ) -> Outcome | None:
        """End a batch whose items all have an outcome; ``None`` if the row changed meanwhile."""
        status = status or batch.final_status(items) or OperationStatus.FAILED
        finished = self.ledger.finish(record, status, error=error, items=items)
        if finished is None:
            return None
        log.info(
            "%s %s key=%s calls=%d items: %s",
            status.value,
            finished.where,
            finished.idempotency_key,
            finished.attempts,
            batch.summary(items),
        )
        return Done(result(finished, replayed=False))

    def lost_last_attempt(self, record: OperationRecord) -> Outcome | None:
        """The worker of the last allowed attempt was lost: the operation ends dead."""
        error = last_attempt_lost(record.where, record.attempts)
        finished = self.ledger.finish(record, OperationStatus.DEAD, error=error)
        if finished is None:
            return None
        log.warning(
            "dead %s key=%s operation_id=%s: %s",
            record.where,
            record.idempotency_key,
            record.id,
            error.message,
        )
        return Failed(OperationStatus.DEAD, error, record.id)

    def taken_over(self, claimed: OperationRecord) -> Defer:
        # Our lease ran out and another worker claimed the operation: its outcome is the one that counts.
        log.warning(
            "%s key=%s: lease lost to another worker; will report its outcome",
            claimed.where,
            claimed.idempotency_key,
        )
        return Defer(poll_delay(0), WaitReason.TAKEN_OVER)


def log_contract_violation(record: OperationRecord, error: OperationError) -> None:
    log.error(
        "%s key=%s operation_id=%s: the provider's answer does not match the adapter's model: the "
        "provider's API has changed (update the adapter); not retried, the answer is in the ledger: %s",
        record.where,
        record.idempotency_key,
        record.id,
        error.message,
    )
