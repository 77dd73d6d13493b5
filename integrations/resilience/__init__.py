"""Resilience policies: backoff, idempotency rules (and, later, the shared breaker and throttle)."""
