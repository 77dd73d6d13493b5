"""Provider adapters: the base class, the generic ``http`` adapter and the registry by name."""

from integrations.adapters.base import Adapter, HttpCall, OperationSpec, operation

__all__ = ["Adapter", "HttpCall", "OperationSpec", "operation"]
