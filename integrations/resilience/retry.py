"""The one retry policy: after a failed attempt, try again in N seconds, or give up and how.

Single operations and batch items alike ask it (stripe-python keeps one ``_should_retry`` for the same
reason): a failure that is not retryable ends the operation failed; a retryable one is tried again while
attempts remain, never before the provider's ``Retry-After``, and then ends dead.
"""

from __future__ import annotations

from dataclasses import dataclass

from integrations.errors import ErrorInfo, OperationError, retries_exhausted
from integrations.ledger.models import OperationStatus
from integrations.providers import RetrySettings
from integrations.resilience.backoff import ExponentialBackoff, next_delay


@dataclass(frozen=True)
class RetryIn:
    """Another attempt is allowed, ``seconds`` from now."""

    seconds: float


@dataclass(frozen=True)
class GiveUp:
    """No other attempt: ``failed`` for a failure another try would not mend, ``dead`` when the attempts
    are spent (``error`` then says so and keeps the last one's)."""

    status: OperationStatus
    error: ErrorInfo


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff: ExponentialBackoff

    @classmethod
    def of(cls, settings: RetrySettings) -> RetryPolicy:
        return cls(
            settings.max_attempts, ExponentialBackoff(base=settings.backoff_base, cap=settings.backoff_max)
        )

    def after(self, error: OperationError, attempts: int, what: str) -> RetryIn | GiveUp:
        """What follows the failed attempt number ``attempts`` of ``what`` (an operation or an item)."""
        return self.give_up(error, attempts, what) or RetryIn(self.delay(attempts, error.retry_after))

    def give_up(self, error: OperationError, attempts: int, what: str) -> GiveUp | None:
        """``None`` while another attempt is allowed (a batch item, whose round sets the delay)."""
        if not error.retryable:
            return GiveUp(OperationStatus.FAILED, error.info())
        if attempts < self.max_attempts:
            return None
        return GiveUp(OperationStatus.DEAD, retries_exhausted(what, attempts, error.info()))

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds until the next attempt after ``attempts`` failed ones: jittered, and never earlier
        than the provider's ``Retry-After``."""
        return next_delay(self.backoff, attempts, retry_after)
