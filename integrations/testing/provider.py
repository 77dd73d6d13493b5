"""A local HTTP server that plays a third-party API provider for tests, benchmarks and the demo.

Workers call it over real HTTP; query-string parameters make it fail, throttle, stall or drop connections on
demand, and the process that started it can inspect every request it received.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from integrations.testing.http_server import KeepAliveHandler, LocalHTTPServer

_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator received it, with the status it answered (0 when it dropped it)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int
    received_at: float


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    delay: float = 0.0
    cut: bool = False  # send the headers and half the body, then close: an answer cut off in transit
    trickle: float = 0.0  # spread the body over this many seconds, a few bytes at a time


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float


class _BadParameter(ValueError):
    pass


class _Arrivals:
    """Arrival times of the requests one sliding window counts, oldest first; the simulator's lock guards it."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def admit(self, arrived: float, limit: int, window: float) -> float | None:
        """Count a request if fewer than ``limit`` arrived in the ``window`` seconds up to it.

        Returns the time it is counted at (to release it with), or ``None`` when the window is full. Requests
        decided out of arrival order by concurrent handlers count at the latest time seen, so the log stays
        sorted and no window ever holds more than ``limit``.
        """
        if self._times:
            arrived = max(arrived, self._times[-1])
        while self._times and self._times[0] <= arrived - window:
            self._times.popleft()
        if len(self._times) >= limit:
            return None
        self._times.append(arrived)
        return arrived

    def release(self, counted_at: float) -> None:
        with contextlib.suppress(ValueError):
            self._times.remove(counted_at)

    def in_window(self, window: float, now: float) -> int:
        return sum(1 for arrived in self._times if arrived > now - window)

    def seconds_until_free(self, window: float, now: float) -> int:
        """Whole seconds, rounded up, until the oldest request in the window leaves it; 0 when it is empty."""
        oldest = next((arrived for arrived in self._times if arrived > now - window), None)
        return 0 if oldest is None else max(0, math.ceil(oldest + window - now))


@dataclass(frozen=True, slots=True)
class _RateLimit:
    limit: int
    window: float
    headers: bool
    arrivals: _Arrivals


@dataclass(slots=True)
class _Admission:
    """What the rate limiters did with one request: the provider-wide limit it met and the slots it took."""

    rate_limit: _RateLimit | None = None
    counted: list[tuple[_Arrivals, float]] = field(default_factory=list)

    def release(self) -> None:
        for arrivals, counted_at in self.counted:
            arrivals.release(counted_at)
        self.counted.clear()


def _error_body(status: int, message: str | None = None, error_type: str = "simulated") -> bytes:
    error = {"type": error_type, "message": message or f"simulated {status}", "status": status}
    return json.dumps({"error": error}).encode()


def _error(status: int, retry_after: str | None, delay: float = 0.0) -> _Response:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return _Response(status, _error_body(status), "application/json", headers, delay=delay)


def _status_param(query: dict[str, str], name: str, default: int) -> int:
    value = _int_param(query, name, default)
    if not 200 <= value <= 599:
        raise _BadParameter(f"{name} must be an HTTP status between 200 and 599, got {value}")
    return value


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadParameter(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise _BadParameter(f"{name} must not be negative, got {value}")
    return value


def _delay_param(query: dict[str, str]) -> float:
    raw = query.get("delay")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise _BadParameter(f"delay must be a number of seconds, got {raw!r}") from None
    if not 0.0 <= value < float("inf"):
        raise _BadParameter(f"delay must be a finite, non-negative number of seconds, got {raw!r}")
    return value


def _path_limit_params(query: dict[str, str]) -> tuple[int, float] | None:
    if "limit" not in query:
        if "limit_window" in query:
            raise _BadParameter("limit_window needs limit")
        return None
    limit = _int_param(query, "limit", 0)
    if limit < 1:
        raise _BadParameter(f"limit must be at least 1, got {limit}")
    raw = query.get("limit_window", "1")
    try:
        window = float(raw)
    except ValueError:
        raise _BadParameter(f"limit_window must be a number of seconds, got {raw!r}") from None
    if not 0.0 < window < float("inf"):
        raise _BadParameter(f"limit_window must be a finite, positive number of seconds, got {raw!r}")
    return limit, window


def _too_many(arrivals: _Arrivals, window: float) -> _Response:
    retry_after = max(1, arrivals.seconds_until_free(window, time.monotonic()))
    return _error(429, str(retry_after))


def _flag_param(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in {"1", "true", "yes", "on"}


def _stable_id(idempotency_key: str | None) -> str:
    seed = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
    return "sim_" + hashlib.sha256(seed.encode()).hexdigest()[:16]


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class ProviderSimulator(LocalHTTPServer):
    """A threaded local HTTP provider whose behaviour each request picks with query parameters.

    Any method, any path. ``ok_status=201`` changes the success status; ``status=422`` always answers that
    status; ``fail=2&fail_status=503`` fails the first two requests per (path, Idempotency-Key), or per
    path and query without a key; ``retry_after=<v>`` adds ``Retry-After: <v>`` to error responses;
    ``delay=0.5`` stalls before answering; ``drop=1`` closes the connection unanswered (only the failing
    requests when combined with ``fail``); ``text=1`` answers ``text/plain`` ``ok``; ``cut=1`` cuts the
    success answer off halfway through its body; ``trickle=5`` spreads it over 5 s in small pieces (no
    read ever waits long, so a per-read client timeout does not fire). ``limit=5&limit_window=0.5`` lets
    at most five requests to that path through in any 0.5 s (``limit_window`` defaults to 1) and answers the
    rest 429 with ``Retry-After``, a separate sliding window per path, decided before ``fail``, ``status``
    and ``delay``. ``set_rate_limit()`` does the same across all paths, checked first. ``set_outage()``
    overrides all of it. The socket is bound on construction, so ``url`` is known before ``start()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._calls: list[RecordedRequest] = []
        self._fail_counts: dict[tuple[str, str], int] = {}
        self._outage: tuple[int, str | None] | None = None
        self._rate_limit: _RateLimit | None = None
        self._path_arrivals: dict[str, _Arrivals] = {}
        self._stopping = threading.Event()
        super().__init__(_handler(self), host, port)

    def stop(self) -> None:
        self._stopping.set()  # wakes the handlers that stall (delay, trickle) so they end at once
        super().stop()

    def calls(self, path: str | None = None, idempotency_key: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            snapshot = list(self._calls)
        return [
            call
            for call in snapshot
            if (path is None or call.path == path)
            and (idempotency_key is None or call.headers.get("idempotency-key") == idempotency_key)
        ]

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._fail_counts.clear()
            self._outage = None
            self._rate_limit = None
            self._path_arrivals.clear()

    def set_outage(self, status: int | None, retry_after: float | None = None) -> None:
        if status is None:
            with self._lock:
                self._outage = None
            return
        if not 400 <= status <= 599:
            raise ValueError(f"outage status must be between 400 and 599, got {status}")
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must not be negative, got {retry_after}")
        header = None if retry_after is None else f"{retry_after:g}"
        with self._lock:
            self._outage = (status, header)

    def set_rate_limit(self, limit: int | None, window: float = 1.0, headers: bool = False) -> None:
        """Answer 429 to any request that would be the ``limit + 1``-th in the ``window`` seconds up to it.

        A strict provider-wide sliding window over all paths and methods: it counts every request answered
        outside an outage, except those it refuses and those dropped unanswered. A refusal carries
        ``Retry-After``, whole seconds (at least 1) until the oldest counted request leaves the window.
        With ``headers``, every answer it counted or refused also carries ``X-RateLimit-Limit``,
        ``X-RateLimit-Remaining`` (after this request) and ``X-RateLimit-Reset`` (whole seconds until the
        oldest counted request leaves the window, 0 when none is in it). Changing the limit keeps the
        requests already counted; ``None`` ends it and forgets them, as does ``reset()``.
        """
        if limit is None:
            with self._lock:
                self._rate_limit = None
            return
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if not 0.0 < window < float("inf"):
            raise ValueError(f"window must be a finite, positive number of seconds, got {window}")
        with self._lock:
            arrivals = self._rate_limit.arrivals if self._rate_limit is not None else _Arrivals()
            self._rate_limit = _RateLimit(limit, window, headers, arrivals)

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _handle(self, request: _Request) -> _Response:
        admission = _Admission()
        try:
            response = self._decide(request, admission)
        except _BadParameter as exc:
            response = _Response(
                400, _error_body(400, str(exc), "invalid_simulator_parameter"), "application/json"
            )
        with self._lock:
            if response.drop:
                admission.release()
            elif admission.rate_limit is not None and admission.rate_limit.headers:
                response = replace(response, headers=response.headers + _limit_headers(admission.rate_limit))
            self._calls.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=request.query,
                    headers=request.headers,
                    body=request.body,
                    json=request.json,
                    status=0 if response.drop else response.status,
                    received_at=request.received_at,
                )
            )
        return response

    def _decide(self, request: _Request, admission: _Admission) -> _Response:
        query = request.query
        with self._lock:
            outage = self._outage
        if outage is not None:
            return _error(outage[0], outage[1], _delay_param(query))
        refusal = self._admit(request, admission)
        if refusal is not None:
            return refusal

        delay = _delay_param(query)
        retry_after = query.get("retry_after")
        if retry_after is not None and ("\r" in retry_after or "\n" in retry_after):
            raise _BadParameter("retry_after must not contain line breaks")
        drop = _flag_param(query, "drop")
        if "fail" in query:
            fail = _int_param(query, "fail", 0)
            fail_status = _status_param(query, "fail_status", 503)
            key = request.headers.get("idempotency-key")
            counter_key = (request.path, key if key is not None else "?" + _canonical_query(query))
            with self._lock:
                seen = self._fail_counts.get(counter_key, 0) + 1
                self._fail_counts[counter_key] = seen
            if seen <= fail:
                if drop:
                    return _Response(0, drop=True, delay=delay)
                return _error(fail_status, retry_after, delay)
        elif drop:
            return _Response(0, drop=True, delay=delay)

        if "status" in query:
            status = _status_param(query, "status", 200)
            if status >= 400:
                return _error(status, retry_after, delay)
        else:
            status = _status_param(query, "ok_status", 200)
        return self._success(request, status, delay)

    def _admit(self, request: _Request, admission: _Admission) -> _Response | None:
        """Count the request against the provider-wide limit, then its path's; a 429 when either is full."""
        with self._lock:
            rate_limit = admission.rate_limit = self._rate_limit
            if rate_limit is not None:
                counted_at = rate_limit.arrivals.admit(
                    request.received_at, rate_limit.limit, rate_limit.window
                )
                if counted_at is None:
                    return _too_many(rate_limit.arrivals, rate_limit.window)
                admission.counted.append((rate_limit.arrivals, counted_at))
            path_limit = _path_limit_params(request.query)
            if path_limit is None:
                return None
            limit, window = path_limit
            arrivals = self._path_arrivals.setdefault(request.path, _Arrivals())
            counted_at = arrivals.admit(request.received_at, limit, window)
            if counted_at is None:
                admission.release()
                return _too_many(arrivals, window)
            admission.counted.append((arrivals, counted_at))
        return None

    def _success(self, request: _Request, status: int, delay: float) -> _Response:
        if status in _NO_BODY_STATUSES:
            return _Response(status, delay=delay)
        if _flag_param(request.query, "text"):
            return _Response(status, b"ok", "text/plain; charset=utf-8", delay=delay)
        cut = _flag_param(request.query, "cut")
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
        return _Response(status, body, "application/json", delay=delay, cut=cut, trickle=trickle)


def _limit_headers(rate_limit: _RateLimit) -> tuple[tuple[str, str], ...]:
    now = time.monotonic()
    arrivals, window = rate_limit.arrivals, rate_limit.window
    return (
        ("X-RateLimit-Limit", str(rate_limit.limit)),
        ("X-RateLimit-Remaining", str(max(0, rate_limit.limit - arrivals.in_window(window, now)))),
        ("X-RateLimit-Reset", str(arrivals.seconds_until_free(window, now))),
    )


def _canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{name}={value}" for name, value in sorted(query.items()))


class _Handler(KeepAliveHandler):
    simulator: ProviderSimulator  # set on the subclass each simulator serves

    def version_string(self) -> str:
        return "ProviderSimulator/1.0"

    def _serve(self) -> None:
        received_at = time.monotonic()
        target = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            lowered = name.lower()
            headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
        try:
            body = self.read_body()
        except ValueError:
            self.close_connection = True
            self._write(_Response(400, _error_body(400, "malformed request body", "bad_request")))
            return
        request = _Request(
            method=self.command,
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            json=_parse_json(body),
            received_at=received_at,
        )
        simulator = self.simulator
        response = simulator._handle(request)
        if response.delay:
            simulator._wait(response.delay)
        if response.drop:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status not in _NO_BODY_STATUSES:
            if response.content_type is not None:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body and self.command != "HEAD" and response.status not in _NO_BODY_STATUSES:
            if response.trickle:
                pieces = 20
                step = max(1, -(-len(response.body) // pieces))
                for start in range(0, len(response.body), step):
                    self.wfile.write(response.body[start : start + step])
                    self.wfile.flush()
                    self.simulator._wait(response.trickle / pieces)
                return
            if response.cut:
                self.wfile.write(response.body[: len(response.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(response.body)

    do_GET = _serve
    do_HEAD = _serve
    do_POST = _serve
    do_PUT = _serve
    do_PATCH = _serve
    do_DELETE = _serve
    do_OPTIONS = _serve


def _handler(simulator: ProviderSimulator) -> type[_Handler]:
    """The handler class serving ``simulator``'s requests."""
    return type("SimulatorHandler", (_Handler,), {"simulator": simulator})


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the provider simulator until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    simulator = ProviderSimulator(args.host, args.port).start()
    print(simulator.url, flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    finally:
        simulator.stop()


if __name__ == "__main__":
    main()
