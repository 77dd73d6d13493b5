"""The sweeper: it finishes what the broker dropped, from the ledger.

A message can be lost between the ledger and the provider: Redis restarted without its data, a worker's
main process killed while it held the message (Redis hands it out again only after the visibility timeout,
an hour), a retry whose countdown message never came back. The ledger still knows the operation. Every
``INTEGRATIONS_SWEEP_INTERVAL`` seconds the sweeper finds the operations that should have had a delivery
by a grace period ago and had none (queued and due, or running on a lease that ran out), and publishes
their message again under the same task id, so the caller's ``AsyncResult`` still gets the outcome.

A message that was not really lost (a long backlog) costs one extra delivery, which the ledger turns into a
wait or a replay: never a second call in flight. Two sweepers at once publish an operation once (the mark in
the row is compare-and-set).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import timedelta

from integrations.ledger.engine import Clock, utcnow
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger

log = logging.getLogger("integrations.sweeper")

# Operations looked at in one sweep; the next sweep takes the rest.
SWEEP_LIMIT = 1000


@dataclass(frozen=True)
class Swept:
    """An operation whose message the sweeper published again."""

    record: OperationRecord
    task_id: str


@dataclass(frozen=True)
class Sweeper:
    """``publish(record) -> task id`` sends the operation's message (under ``record.task_id`` when it has
    one); ``providers`` are the ones this deployment serves: an operation of another is left alone, and
    said so, since its message would wait on a queue nobody reads."""

    ledger: Ledger
    publish: Callable[[OperationRecord], str]
    providers: Collection[str]
    grace: timedelta
    clock: Clock = utcnow

    def sweep(self, limit: int = SWEEP_LIMIT) -> list[Swept]:
        before = self.clock() - self.grace
        swept: list[Swept] = []
        unserved: set[str] = set()
        for record in self.ledger.stranded(before, limit):
            if record.provider not in self.providers:
                unserved.add(record.provider)
                continue
            marked = self.ledger.mark_swept(record, before)
            if marked is None:
                continue  # a worker or another sweeper changed it meanwhile
            task_id = self.publish(marked)
            log.warning(
                "swept %s key=%s operation_id=%s (%s since %s): published again as task %s",
                record.where,
                record.idempotency_key,
                record.id,
                record.status.value,
                _since(record),
                task_id,
            )
            swept.append(Swept(marked, task_id))
        if unserved:
            log.error(
                "operations of providers not in the providers file are waiting and cannot be sent: %s; "
                "add them back to the providers file, or end them",
                ", ".join(sorted(unserved)),
            )
        return swept


def _since(record: OperationRecord) -> str:
    moment = (
        record.lease_expires_at if record.lease_expires_at else record.next_attempt_at or record.updated_at
    )
    return moment.isoformat()
