"""Ledger-first enqueue, for applications that can import this package.

``send_task`` publishes a message and nothing more: if the broker loses it before a worker takes it, the
operation is gone without a trace. ``enqueue`` writes the operation to the ledger first, then publishes
its message; the sweeper (``integrations.sweeper``) sends again whatever the broker drops, so nothing that
was committed is lost::

    from integrations.client import enqueue

    handle = enqueue("acme", "request", payload={...}, idempotency_key="order-8812-payment")
    AsyncResult(handle.task_id).get()

Everything that can be checked is checked before anything is written or sent: an unknown provider or
operation raises ``UnknownOperation``, an invalid payload ``InvalidRequest``, a key used for another
payload ``IdempotencyConflict``. The same key and payload again is safe: the operation happens once, and
the handle names it.

With ``connection=`` (a SQLAlchemy ``Session``, or a ``Connection``, on the ledger's database) the row is
written in the caller's transaction: a ``Session``'s commit publishes the message, a rollback leaves
nothing. SQLAlchemy Core has no hook after a ``Connection``'s commit, so an operation enqueued on a bare
``Connection`` is published by the sweeper once it is committed (within two sweep intervals).

The settings and the publisher come from the deployment's wiring, found through the ``integrations.client``
entry point (this distribution's is ``config.client:client``): the core knows no Celery.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from integrations.adapters.base import Adapter
from integrations.errors import ConfigError, IdempotencyConflict, UnknownOperation
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.store import Ledger
from integrations.message import Delivery, parse_request
from integrations.providers import ProviderSettings

log = logging.getLogger("integrations.client")

ENTRY_POINT_GROUP = "integrations.client"


@dataclass(frozen=True)
class Handle:
    """The operation an ``enqueue`` stands for: its ledger id, and the task id its result is stored
    under. ``created`` is False when the key was enqueued before (the handle then names that one)."""

    operation_id: str
    task_id: str | None  # None only for an operation recorded before the ledger kept task ids
    created: bool


@dataclass
class Client:
    """Enqueues operations of the providers in ``providers``: the row in ``ledger`` first, then
    ``publish(record) -> task id`` (which sends under ``record.task_id``)."""

    providers: Mapping[str, ProviderSettings]
    adapter_classes: Mapping[str, type[Adapter]]
    ledger: Ledger
    publish: Callable[[OperationRecord], str]
    # One per provider, only to validate payloads: making one reads the environment's proxy settings.
    _adapters: dict[str, Adapter] = field(default_factory=dict, init=False, repr=False)

    def enqueue(
        self,
        provider: str,
        operation: str,
        *,
        payload: Any,
        idempotency_key: str,
        request_id: str | None = None,
        connection: Connection | Session | None = None,
    ) -> Handle:
        adapter = self._adapter(provider, operation)
        kwargs: dict[str, Any] = {"payload": payload, "idempotency_key": idempotency_key}
        if request_id is not None:
            kwargs["request_id"] = request_id
        request, _items = parse_request(Delivery(operation, kwargs, message_id=str(uuid.uuid4())), adapter)
        new = request.new_operation()
        on = connection.connection() if isinstance(connection, Session) else connection
        record, created = self.ledger.enqueue(new, connection=on)
        if not created:
            return self._again(record, new)
        if connection is None:
            self._publish(record)
        elif isinstance(connection, Session):
            self._publish_after_commit(connection, record)
        return Handle(record.id, record.task_id, created=True)

    def _adapter(self, provider: str, operation: str) -> Adapter:
        settings = self.providers.get(provider)
        if settings is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise UnknownOperation(f"no provider {provider!r} in the providers file (known: {known})")
        adapter_class = self.adapter_classes[provider]
        if operation not in adapter_class.operations:
            known = ", ".join(sorted(adapter_class.operations))
            raise UnknownOperation(
                f"{provider}: adapter {adapter_class.name!r} has no operation {operation!r} (it has: {known})"
            )
        if provider not in self._adapters:
            # No call is made with it, so it needs no session or credentials.
            self._adapters[provider] = adapter_class(settings, session=None, credentials=None)  # type: ignore[arg-type]
        return self._adapters[provider]

    def _again(self, record: OperationRecord, new: NewOperation) -> Handle:
        """The key is in the ledger already: the same request is that operation; another is a conflict,
        except over an invalid request's row, which a valid request takes over (as a worker would)."""
        if record.invalid_request:
            message = replace(
                record,
                operation=new.operation,
                payload=new.payload,
                request_id=new.request_id,
                task_id=new.task_id,
            )
            self._publish(message)
            return Handle(record.id, new.task_id, created=False)
        if record.fingerprint != new.fingerprint:
            raise IdempotencyConflict(
                f"{new.provider}.{new.operation}: idempotency key {new.idempotency_key!r} was already used by "
                f"operation {record.id} ({record.where}) with a different operation or payload; use a new key "
                "for a new operation"
            )
        return Handle(record.id, record.task_id, created=False)

    def _publish_after_commit(self, session: Session, record: OperationRecord) -> None:
        """Publish once ``session``'s transaction has committed, if the row is there: a rollback of the
        transaction, or of a savepoint the row was written in, leaves nothing to send."""

        def committed(_: Session) -> None:
            if self.ledger.get(record.id) is not None:
                self._publish(record)

        event.listen(session, "after_commit", committed, once=True)

    def _publish(self, record: OperationRecord) -> None:
        try:
            self.publish(record)
        except Exception:
            # The row is committed: the sweeper sends it once the broker answers again.
            log.exception(
                "%s key=%s operation_id=%s: recorded, but its message could not be sent now; the sweeper "
                "sends it later",
                record.where,
                record.idempotency_key,
                record.id,
            )


@cache
def default_client() -> Client:
    """The client the deployment's wiring builds from the environment (the workers' settings)."""
    found = entry_points(group=ENTRY_POINT_GROUP)
    if not found:
        raise ConfigError(
            f"no {ENTRY_POINT_GROUP!r} entry point is installed: install the integrations distribution, "
            "or build a Client with your own publisher"
        )
    make: Callable[[], Client] = next(iter(found)).load()
    return make()


def enqueue(
    provider: str,
    operation: str,
    *,
    payload: Any,
    idempotency_key: str,
    request_id: str | None = None,
    connection: Connection | Session | None = None,
) -> Handle:
    """Record the operation in the ledger, then publish its message; see the module's docstring."""
    return default_client().enqueue(
        provider,
        operation,
        payload=payload,
        idempotency_key=idempotency_key,
        request_id=request_id,
        connection=connection,
    )
