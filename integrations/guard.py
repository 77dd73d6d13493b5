"""Guards around the provider call, and the chain that asks them in order.

A leaf module: ``resilience/`` implements guards (the shared breaker and throttle) against this protocol,
and the pipeline runs them through ``GuardChain`` without knowing which they are.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from types import FrameType
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from integrations.errors import ErrorType, OperationError, TransientError
from integrations.outcome import Defer
from integrations.providers import ProviderSettings
from integrations.resilience.ratelimit_headers import RateLimitState, parse_rate_limit_headers

log = logging.getLogger("integrations.operations")

# A guard's wait up to this long is slept through in the worker instead of re-queueing the message.
INLINE_WAIT = 0.05


@dataclass(frozen=True)
class Attempt:
    """What a guard sees of the attempt about to be made."""

    provider: ProviderSettings
    operation: str
    payload: BaseModel
    raw_payload: Mapping[str, Any]
    idempotency_key: str
    token: str  # stable across the redeliveries of one message: its id


@dataclass(frozen=True)
class Observation:
    """How the call went: ``error`` is None on success; ``headers`` are the answer's, if one came."""

    error: OperationError | None
    seconds: float
    headers: Mapping[str, str]

    @cached_property
    def rate_limit(self) -> RateLimitState | None:
        """The provider's rate-limit state as the answer's headers give it, read once for every observer."""
        return parse_rate_limit_headers(self.headers) if self.headers else None


class Guard(Protocol):
    """A check around the provider call (the shared breaker and throttle are guards).

    ``admit`` runs before an attempt is claimed, so a deferral never uses an attempt; ``observe`` sees
    how the call went. Guards run in order, observers in reverse.
    """

    def admit(self, attempt: Attempt) -> Defer | None: ...

    def observe(self, attempt: Attempt, observation: Observation) -> None: ...

    def release(self, attempt: Attempt) -> None:
        """The attempt it admitted will not be made (a later guard said wait, or another worker
        claimed the operation): give back what was granted for it."""
        ...


class _Answer(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


Answer = TypeVar("Answer", bound=_Answer)


class AttemptTimedOut(Exception):
    """The call ran past its deadline and was cut (see ``deadline``)."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Cut the block with ``AttemptTimedOut`` after ``seconds``, by a timer signal: what a per-read timeout
    cannot do against a slow trickle of bytes. Only the block is covered, not what follows it (storing the
    result, say). Signals reach only a process's main thread, where a worker's pool process runs its task;
    elsewhere there is no deadline, and the host's own time limit is the backstop. Nor is there one while
    something else holds the process's real-time timer: it is left alone."""
    if (
        not seconds
        or threading.current_thread() is not threading.main_thread()
        or signal.getitimer(signal.ITIMER_REAL)[0] > 0
    ):
        yield
        return

    def expired(_signal: int, _frame: FrameType | None) -> None:
        raise AttemptTimedOut(f"cut after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class GuardChain:
    """The guards of one provider, asked in order before a call and shown its result after it.

    Each call is cut at the provider's ``attempt_deadline``: it then counts as timed out and is retried."""

    guards: Sequence[Guard] = ()
    sleep: Callable[[float], None] = time.sleep

    def admit(self, attempt: Attempt) -> Defer | None:
        """Ask each guard in turn; a wait of a few ms is waited here, cheaper than a round through the
        broker. If one says wait, those that already said yes give back what they granted."""
        for position, guard in enumerate(self.guards):
            deferral = guard.admit(attempt)
            for _ in range(3):
                if deferral is None or deferral.delay > INLINE_WAIT:
                    break
                self.sleep(deferral.delay)
                deferral = guard.admit(attempt)
            if deferral is not None:
                self._release(attempt, self.guards[:position])
                return deferral
        return None

    def release(self, attempt: Attempt) -> None:
        """The admitted attempt will not be made (another worker claimed the operation first)."""
        self._release(attempt, self.guards)

    def call(
        self, attempt: Attempt, call: Callable[[], Answer]
    ) -> tuple[Answer | None, OperationError | None]:
        """Make the provider call and show the guards how it went; any failure becomes an error."""
        where = f"{attempt.provider.name}.{attempt.operation}"
        started = time.monotonic()
        error: OperationError | None = None
        reply: Answer | None = None
        try:
            with deadline(attempt.provider.attempt_deadline):
                reply = call()
        except OperationError as exc:
            error = exc
        except AttemptTimedOut as exc:
            error = TransientError(
                f"{where}: the attempt ran past its time limit ({type(exc).__name__})",
                error_type=ErrorType.TIMEOUT,
            )
        except Exception as exc:  # an adapter bug must end as a dead letter, not vanish with the message
            log.exception("%s: adapter raised unexpectedly", where)
            error = OperationError(f"{where}: adapter error: {exc!r}")
        headers = reply.headers if reply is not None else error.headers if error is not None else {}
        observation = Observation(error, time.monotonic() - started, headers)
        for guard in reversed(self.guards):
            guard.observe(attempt, observation)
        return reply, error

    @staticmethod
    def _release(attempt: Attempt, guards: Sequence[Guard]) -> None:
        for guard in reversed(guards):
            guard.release(attempt)
