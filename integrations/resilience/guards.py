"""The shared breaker and throttle as pipeline guards, and what they do when Redis cannot be reached."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis

from integrations import keys
from integrations.errors import ErrorType, OperationError
from integrations.guard import INLINE_WAIT, Attempt, Observation
from integrations.outcome import Defer, WaitReason
from integrations.providers import ProviderSettings
from integrations.resilience.backoff import MAX_RETRY_AFTER
from integrations.resilience.breaker import Admission, BreakerState, SharedBreaker, Transition
from integrations.resilience.scripts import script
from integrations.resilience.throttle import Take, TakeResult, Throttle, paused_for

log = logging.getLogger("integrations.resilience")

# Redis out of reach, as opposed to Redis answering with an error (a bug or a misconfiguration, which is
# not waited out: it goes up as an internal error, named in the log).
UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    # A Redis Cluster none of whose nodes answers, or that has lost a slot's owner.
    redis.exceptions.RedisClusterException,
    redis.exceptions.ClusterDownError,
)

# How soon an operation looks again when Redis is down, or while another worker's probe is in flight.
REDIS_DOWN_WAIT = 5.0
PROBE_POLL = 1.0
# Usage of a provider's own quota above this logs a warning, once per quota window.
USAGE_WARNING = 0.8


class RedisGuard:
    """A guard whose state is in Redis. With Redis out of reach it defers the operation (the default)
    or, with ``when_redis_down = "call"``, lets it through unguarded."""

    def __init__(self, provider: ProviderSettings) -> None:
        self.provider = provider

    def admit(self, attempt: Attempt) -> Defer | None:
        try:
            return self._admit(attempt)
        except UNREACHABLE as exc:
            if self.provider.when_redis_down == "call":
                log.warning(
                    "%s: Redis unreachable, calling without %s: %s", self.provider.name, self.what, exc
                )
                return None
            log.error("%s: Redis unreachable, operation waits (%s): %s", self.provider.name, self.what, exc)
            return Defer(REDIS_DOWN_WAIT, WaitReason.REDIS_UNAVAILABLE)

    def observe(self, attempt: Attempt, observation: Observation) -> None:
        try:
            self._observe(attempt, observation)
        except UNREACHABLE as exc:
            log.warning(
                "%s: Redis unreachable, %s did not see a call's result: %s",
                self.provider.name,
                self.what,
                exc,
            )

    what = "guard"

    def release(self, attempt: Attempt) -> None:
        try:
            self._release(attempt)
        except UNREACHABLE as exc:
            log.warning(
                "%s: Redis unreachable, %s keeps a grant until it expires: %s",
                self.provider.name,
                self.what,
                exc,
            )

    def _release(self, attempt: Attempt) -> None:
        """Nothing to give back, unless a guard says otherwise."""

    def _admit(self, attempt: Attempt) -> Defer | None:
        raise NotImplementedError

    def _observe(self, attempt: Attempt, observation: Observation) -> None:
        raise NotImplementedError


_NOT_THE_PROVIDERS_HEALTH = frozenset({ErrorType.RATE_LIMITED, ErrorType.RESOURCE_LOCKED})


def counts_as_failure(error: OperationError | None, seconds: float, slow_call: float | None) -> bool:
    """What the breaker counts against a provider: transient failures and slow calls. Rejections,
    invalid requests and conflicts show a provider that answers; a 429 is the throttle's business, and a
    locked object says nothing about the provider's health."""
    if error is not None and (not error.retryable or error.error_type in _NOT_THE_PROVIDERS_HEALTH):
        return False
    return error is not None or (slow_call is not None and seconds > slow_call)


class SharedGuard(RedisGuard):
    """The provider's breaker and throttle, shared by every worker: asked in one round trip before a call
    (``admit.lua``: the breaker, then the throttle, which an open breaker is not asked for a token) and told
    how it went in one after it (``observe.lua``)."""

    what = "the breaker and the throttle"

    def __init__(self, provider: ProviderSettings, breaker: SharedBreaker, throttle: Throttle) -> None:
        super().__init__(provider)
        self.breaker = breaker
        self.throttle = throttle
        client = breaker.client
        self._admit_script = script(client, "admit", "breaker_admit", "throttle", "breaker_release")
        self._observe_script = script(client, "observe", "breaker_record", "pause")
        self._usage_warned = keys.usage_warned(provider.name)

    def _admit(self, attempt: Attempt) -> Defer | None:
        per_key = self.provider.per_key
        account = _field(attempt.raw_payload, per_key.field) if per_key else None
        breaker_keys, breaker_args = self.breaker.admission(attempt.token)
        throttle_keys, throttle_args = self.throttle.taking(attempt.token, account)
        breaker_answer, throttle_answer = self._admit_script(
            keys=[*breaker_keys, *throttle_keys], args=[*breaker_args, *throttle_args]
        )
        admission = Admission.of(breaker_answer)
        if not admission.allowed:
            return _breaker_deferral(admission)
        return _throttle_deferral(Take.of(throttle_answer))

    def _release(self, attempt: Attempt) -> None:
        self.breaker.release_probe(attempt.token)

    def _observe(self, attempt: Attempt, observation: Observation) -> None:
        provider = self.provider
        error, state = observation.error, observation.rate_limit
        failed = counts_as_failure(error, observation.seconds, provider.breaker.slow_call)
        pauses: dict[str, float] = {}  # why: how long
        if error is not None and error.error_type is ErrorType.RATE_LIMITED:
            wait = error.retry_after or max(1.0, provider.retry.backoff_base)
            pauses["429 from the provider"] = min(wait, MAX_RETRY_AFTER)
        if state is not None and state.exhausted and state.reset_after:
            pauses["the provider's quota is spent"] = min(state.reset_after, MAX_RETRY_AFTER)
        usage = state.usage if state is not None else None
        warn = usage is not None and usage >= USAGE_WARNING
        breaker_keys, breaker_args = self.breaker.recording(attempt.token, failed=failed)
        pause_args = self.throttle.pausing(max(pauses.values())) if pauses else ["", ""]
        window_ms = int(((state.reset_after if state else None) or 60.0) * 1000) or 1000
        recorded, paused, warned = self._observe_script(
            keys=[*breaker_keys, self.throttle.bucket_key, self._usage_warned],
            args=[*breaker_args, *pause_args, window_ms if warn else ""],
        )
        transition = Transition.of(recorded)
        if transition is Transition.OPENED:
            log.warning(
                "%s: circuit breaker opened for every worker; calls resume with one probe in %gs",
                provider.name,
                provider.breaker.reset_timeout,
            )
        elif transition is Transition.CLOSED:
            log.warning("%s: circuit breaker closed: the probe call succeeded", provider.name)
        for why in pauses:
            log.warning("%s: %s; every worker pauses it for %.1fs", provider.name, why, paused_for(paused))
        if int(warned):
            assert state is not None
            log.warning(
                "%s: %.0f%% of the provider's rate limit used (%s of %s left; resets in %ss)",
                provider.name,
                (usage or 0) * 100,
                state.remaining,
                state.limit,
                state.reset_after,
            )


def _breaker_deferral(admission: Admission) -> Defer:
    if admission.state is BreakerState.HALF_OPEN:  # another worker's probe is in flight: look again soon
        return Defer(min(admission.wait, PROBE_POLL), WaitReason.BREAKER_HALF_OPEN)
    if admission.state is BreakerState.FORCED_OPEN:
        return Defer(admission.wait, WaitReason.BREAKER_FORCED_OPEN)
    return Defer(admission.wait, WaitReason.BREAKER_OPEN)


def _throttle_deferral(take: Take) -> Defer | None:
    if take.allowed:
        return None
    if take.why is TakeResult.PAUSED:
        return Defer(take.wait, WaitReason.PAUSED)
    if take.why is TakeResult.THROTTLED and take.wait > 2 * INLINE_WAIT:
        # A new slot: come back a little early and wait out the last stretch in the worker, since a
        # message the broker hands back late would waste its slot.
        return Defer(take.wait - INLINE_WAIT, WaitReason.THROTTLED)
    return Defer(take.wait, WaitReason.THROTTLED)


def _field(payload: Mapping[str, Any], path: str) -> str | None:
    """A payload field by dotted path (``json.account``), as text; None when absent."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return None if value is None else str(value)
