"""A local HTTP server that plays a third-party API provider for tests, benchmarks and the demo.

Workers call it over real HTTP; query-string parameters make it fail, throttle, stall or drop connections on
demand, and the process that started it can inspect every request it received. This module is the server
and its call log; what a query asks for is read in ``scenario``, the sliding windows live in ``rate_limits``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from integrations.testing.http_server import KeepAliveHandler, LocalHTTPServer
from integrations.testing.rate_limits import Admission, Arrivals, RateLimit, limit_headers, too_many
from integrations.testing.scenario import (
    NO_BODY_STATUSES,
    Answer,
    BadParameter,
    Request,
    delay_param,
    error_answer,
    error_body,
    parameter_error,
    path_limit_params,
    script,
)


@dataclass(frozen=True, slots=True)
class RecordedRequest(Request):
    """One request as the simulator received it, with the status it answered (0 when it dropped it)."""

    status: int


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
        self._rate_limit: RateLimit | None = None
        self._path_arrivals: dict[str, Arrivals] = {}
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
            arrivals = self._rate_limit.arrivals if self._rate_limit is not None else Arrivals()
            self._rate_limit = RateLimit(limit, window, headers, arrivals)

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _handle(self, request: Request) -> Answer:
        admission = Admission()
        try:
            response = self._decide(request, admission)
        except BadParameter as exc:
            response = parameter_error(exc)
        with self._lock:
            if response.drop:
                admission.release()
            elif admission.rate_limit is not None and admission.rate_limit.headers:
                response = replace(response, headers=response.headers + limit_headers(admission.rate_limit))
            self._calls.append(
                RecordedRequest(
                    **{each.name: getattr(request, each.name) for each in fields(Request)},
                    status=0 if response.drop else response.status,
                )
            )
        return response

    def _decide(self, request: Request, admission: Admission) -> Answer:
        with self._lock:
            outage = self._outage
        if outage is not None:
            return error_answer(outage[0], outage[1], delay_param(request.query))
        refusal = self._admit(request, admission)
        if refusal is not None:
            return refusal
        return script(request, self._seen)

    def _seen(self, failure_key: tuple[str, str]) -> int:
        """Count one more request that asks to fail under ``failure_key``; how many there have been."""
        with self._lock:
            seen = self._fail_counts.get(failure_key, 0) + 1
            self._fail_counts[failure_key] = seen
        return seen

    def _admit(self, request: Request, admission: Admission) -> Answer | None:
        """Count the request against the provider-wide limit, then its path's; a 429 when either is full."""
        with self._lock:
            rate_limit = admission.rate_limit = self._rate_limit
            if rate_limit is not None:
                counted_at = rate_limit.arrivals.admit(
                    request.received_at, rate_limit.limit, rate_limit.window
                )
                if counted_at is None:
                    return too_many(rate_limit.arrivals, rate_limit.window)
                admission.counted.append((rate_limit.arrivals, counted_at))
            path_limit = path_limit_params(request.query)
            if path_limit is None:
                return None
            limit, window = path_limit
            arrivals = self._path_arrivals.setdefault(request.path, Arrivals())
            counted_at = arrivals.admit(request.received_at, limit, window)
            if counted_at is None:
                admission.release()
                return too_many(arrivals, window)
            admission.counted.append((arrivals, counted_at))
        return None


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


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
            self._write(Answer(400, error_body(400, "malformed request body", "bad_request")))
            return
        request = Request(
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

    def _write(self, response: Answer) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status not in NO_BODY_STATUSES:
            if response.content_type is not None:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body and self.command != "HEAD" and response.status not in NO_BODY_STATUSES:
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
