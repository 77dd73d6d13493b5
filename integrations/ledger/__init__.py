"""The operation ledger: one durable row per (provider, idempotency key), in SQL through SQLAlchemy 2."""

from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger

__all__ = ["Ledger", "OperationRecord", "OperationStatus"]
