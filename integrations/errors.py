"""Errors of the integrations core.

The tree::

    IntegrationsError
    ├── ConfigError             the providers file or the settings are wrong (names file, provider, key)
    ├── LedgerUnavailable       the ledger database cannot be reached; the operation waits, nothing is lost
    ├── OperationFailed         raised by a task whose operation ended failed or dead (Celery FAILURE)
    ├── UnknownOperation        ``enqueue`` of a provider or operation the providers file does not have
    ├── IdempotencyConflict     ``enqueue`` of a key already used for another operation or payload
    └── OperationError          one attempt at an operation went wrong; carries an ``ErrorInfo``
        ├── InvalidRequest      the message breaks the contract: never retried, no provider call
        ├── ProviderRejected    the provider refused the request (4xx other than 408/429): never retried
        ├── ContractViolation   the provider answered something the adapter's model does not accept
        └── TransientError      connection error, timeout, 408, 429 or 5xx: retried with backoff

Foreign exceptions (requests, pydantic, SQLAlchemy) are mapped to these at one place each, with
``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class ErrorType(StrEnum):
    """The ``type`` of an error as the ledger, the CLI and task results name it."""

    INVALID_REQUEST = "invalid_request"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    PROVIDER_REJECTED = "provider_rejected"
    CONTRACT_VIOLATION = "contract_violation"
    RETRIES_EXHAUSTED = "retries_exhausted"
    # Transient, retried while attempts remain:
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    RATE_LIMITED = "rate_limited"
    # The provider's object is busy with another request (a lock timeout, a conflict): retried, and no
    # sign that the provider is down, so the breaker does not count it.
    RESOURCE_LOCKED = "resource_locked"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    INTERNAL_ERROR = "internal_error"


class ErrorInfo(BaseModel):
    """What went wrong, as stored in the ledger and shown to operators."""

    type: ErrorType
    message: str
    status_code: int | None = None
    body: Any = None


class IntegrationsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(IntegrationsError):
    """The providers file or the settings are wrong; the message names the file, provider and key."""


class LedgerUnavailable(IntegrationsError):
    """The ledger database could not be reached or answered with an error."""


class OperationFailed(IntegrationsError):
    """An operation ended failed or dead; the message starts with the error type."""


class UnknownOperation(IntegrationsError, LookupError):
    """No provider, or no operation of its adapter, by that name; the message lists the known ones."""


class IdempotencyConflict(IntegrationsError):
    """The idempotency key was already used for another operation or payload; use a new key."""


class OperationError(IntegrationsError):
    """One attempt at an operation went wrong. ``retry_after``: the provider's earliest time for another
    try, in seconds, when it named one (only a retryable error is tried again)."""

    error_type: ErrorType = ErrorType.INTERNAL_ERROR
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        error_type: ErrorType | None = None,
        status_code: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if error_type is not None:
            self.error_type = error_type
        self.message = message
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = {}  # the provider's answer's headers, when there was one

    def __str__(self) -> str:
        # Adapters refine ``message`` after the error is made; a traceback shows the refined one.
        return self.message

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            type=self.error_type, message=self.message, status_code=self.status_code, body=self.body
        )


class InvalidRequest(OperationError):
    error_type = ErrorType.INVALID_REQUEST


class ProviderRejected(OperationError):
    error_type = ErrorType.PROVIDER_REJECTED


class ContractViolation(OperationError):
    error_type = ErrorType.CONTRACT_VIOLATION


class TransientError(OperationError):
    """A failure worth another attempt."""

    retryable = True
    error_type = ErrorType.PROVIDER_UNAVAILABLE


def retries_exhausted(what: str, attempts: int, last: ErrorInfo) -> ErrorInfo:
    """The error of an operation or item that spent its attempts; ``what`` names it."""
    return ErrorInfo(
        type=ErrorType.RETRIES_EXHAUSTED,
        message=f"{what}: gave up after {attempts} attempts; last error: {last.message}",
        status_code=last.status_code,
        body=last.body,
    )


def last_attempt_lost(what: str, attempts: int) -> ErrorInfo:
    """The error of an operation or item whose last allowed attempt's worker was lost mid-call."""
    return ErrorInfo(
        type=ErrorType.RETRIES_EXHAUSTED,
        message=(
            f"{what}: gave up after {attempts} attempts; the worker of the last one was lost before it "
            "recorded an outcome (the provider may have carried it out: check with the provider under "
            "this idempotency key)"
        ),
    )
