"""The operation ledger: one durable row per (provider, idempotency key), in SQL through SQLAlchemy 2."""

from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger, OperationRecord

__all__ = ["Ledger", "OperationRecord", "OperationStatus"]
