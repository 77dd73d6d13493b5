"""What one request's query string asks the provider simulator to do, and the answer that scripts.

The parameters are read lazily, in the order the simulator meets them, so a request that fails or is refused
before a parameter is needed is never answered 400 for that parameter.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the simulator's handler read it off the connection."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float


@dataclass(frozen=True, slots=True)
class Answer:
    """What the simulator sends back (or does instead: drop the connection, stall, cut the body short)."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    delay: float = 0.0
    cut: bool = False  # send the headers and half the body, then close: an answer cut off in transit
    trickle: float = 0.0  # spread the body over this many seconds, a few bytes at a time


class BadParameter(ValueError):
    """A query parameter the simulator cannot read; the request is answered 400 with this message."""


def error_body(status: int, message: str | None = None, error_type: str = "simulated") -> bytes:
    error = {"type": error_type, "message": message or f"simulated {status}", "status": status}
    return json.dumps({"error": error}).encode()


def error_answer(status: int, retry_after: str | None, delay: float = 0.0) -> Answer:
    """A JSON error answer, with ``Retry-After`` when one is given."""
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Answer(status, error_body(status), "application/json", headers, delay=delay)


def parameter_error(exc: BadParameter) -> Answer:
    return Answer(400, error_body(400, str(exc), "invalid_simulator_parameter"), "application/json")


def status_param(query: dict[str, str], name: str, default: int) -> int:
    value = int_param(query, name, default)
    if not 200 <= value <= 599:
        raise BadParameter(f"{name} must be an HTTP status between 200 and 599, got {value}")
    return value


def int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise BadParameter(f"{name} must not be negative, got {value}")
    return value


def delay_param(query: dict[str, str]) -> float:
    raw = query.get("delay")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadParameter(f"delay must be a number of seconds, got {raw!r}") from None
    if not 0.0 <= value < float("inf"):
        raise BadParameter(f"delay must be a finite, non-negative number of seconds, got {raw!r}")
    return value


def path_limit_params(query: dict[str, str]) -> tuple[int, float] | None:
    """The per-path rate limit ``limit=N&limit_window=S`` asks for, as (limit, window); ``None`` without one."""
    if "limit" not in query:
        if "limit_window" in query:
            raise BadParameter("limit_window needs limit")
        return None
    limit = int_param(query, "limit", 0)
    if limit < 1:
        raise BadParameter(f"limit must be at least 1, got {limit}")
    raw = query.get("limit_window", "1")
    try:
        window = float(raw)
    except ValueError:
        raise BadParameter(f"limit_window must be a number of seconds, got {raw!r}") from None
    if not 0.0 < window < float("inf"):
        raise BadParameter(f"limit_window must be a finite, positive number of seconds, got {raw!r}")
    return limit, window


def flag_param(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in {"1", "true", "yes", "on"}


def _retry_after_param(query: dict[str, str]) -> str | None:
    retry_after = query.get("retry_after")
    if retry_after is not None and ("\r" in retry_after or "\n" in retry_after):
        raise BadParameter("retry_after must not contain line breaks")
    return retry_after


def failure_key(request: Request) -> tuple[str, str]:
    """What ``fail=N`` counts requests by: the path and Idempotency-Key, or the path and query without a key."""
    key = request.headers.get("idempotency-key")
    return (request.path, key if key is not None else "?" + _canonical_query(request.query))


def _canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{name}={value}" for name, value in sorted(query.items()))


def script(request: Request, seen: Callable[[tuple[str, str]], int]) -> Answer:
    """The answer the query scripts for a request past the outage and the rate limits.

    ``seen`` counts one more request under a ``failure_key`` and returns how many it has counted, this one
    included; it is called only for requests that ask to ``fail``.
    """
    query = request.query
    delay = delay_param(query)
    retry_after = _retry_after_param(query)
    drop = flag_param(query, "drop")
    if "fail" in query:
        fail = int_param(query, "fail", 0)
        fail_status = status_param(query, "fail_status", 503)
        if seen(failure_key(request)) <= fail:
            if drop:
                return Answer(0, drop=True, delay=delay)
            return error_answer(fail_status, retry_after, delay)
    elif drop:
        return Answer(0, drop=True, delay=delay)

    if "status" in query:
        status = status_param(query, "status", 200)
        if status >= 400:
            return error_answer(status, retry_after, delay)
    else:
        status = status_param(query, "ok_status", 200)
    return _success(request, status, delay)


def _success(request: Request, status: int, delay: float) -> Answer:
    """The success answer: an echo of the request with an id stable per Idempotency-Key, or as asked."""
    if status in NO_BODY_STATUSES:
        return Answer(status, delay=delay)
    if flag_param(request.query, "text"):
        return Answer(status, b"ok", "text/plain; charset=utf-8", delay=delay)
    cut = flag_param(request.query, "cut")
    trickle = float(request.query.get("trickle", "0") or 0)
    key = request.headers.get("idempotency-key")
    payload = {
        "id": _stable_id(key),
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "json": request.json,
        "idempotency_key": key,
        "request_id": request.headers.get("x-request-id"),
    }
    body = json.dumps(payload).encode()
    return Answer(status, body, "application/json", delay=delay, cut=cut, trickle=trickle)


def _stable_id(idempotency_key: str | None) -> str:
    seed = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
    return "sim_" + hashlib.sha256(seed.encode()).hexdigest()[:16]
