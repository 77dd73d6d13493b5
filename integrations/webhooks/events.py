"""A webhook event as handlers and adapters see it, and what an adapter may say of it: which operation of
this project it confirms or contradicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from integrations.webhooks.store import Relation


@dataclass(frozen=True)
class Event:
    """A stored, authentic event: ``id`` is the ledger's, ``event_id`` the provider's; ``payload`` the body
    parsed as JSON (kept out of the repr, which may reach a log)."""

    id: str
    provider: str
    event_id: str
    type: str
    received_at: datetime
    payload: Any = field(repr=False)


@dataclass(frozen=True)
class EventLink:
    """The operation an event is about, as the adapter finds it in the event: by the idempotency key the
    operation was sent with (SendGrid's ``custom_args``), or by the provider's id of the object the
    operation made (``reference``: a Stripe PaymentIntent's ``pi_…``, a HubSpot contact's id); and whether
    the event says it took effect (``confirms``) or did not (``contradicts``)."""

    relation: Relation
    idempotency_key: str | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        if (self.idempotency_key is None) == (self.reference is None):
            raise ValueError("an event link names the operation by its idempotency key or by reference, one")
