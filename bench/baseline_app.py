"""The baselines: what teams write without this project. Plain Celery tasks making the same HTTP call,
with Celery's own ``rate_limit`` and ``autoretry_for``, configured as carefully as our app (JSON, late
acks, prefetch 1)."""

from __future__ import annotations

from typing import Any

import requests

from bench.careful import careful_app

app = careful_app("bench-baseline", "bench.baseline")
_session: requests.Session | None = None


def session() -> requests.Session:
    global _session
    if _session is None:
        _session = requests.Session()
    return _session


@app.task(name="bench.bare_call")
def bare_call(url: str, key: str) -> int:
    return session().post(url, headers={"Idempotency-Key": key}, timeout=10).status_code


@app.task(name="bench.rate_limited_call", rate_limit="20/s")
def rate_limited_call(url: str, key: str) -> int:
    return session().post(url, headers={"Idempotency-Key": key}, timeout=10).status_code


@app.task(
    bind=True,
    name="bench.autoretry_call",
    autoretry_for=(requests.RequestException,),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=7,  # 8 attempts, as our provider's max_attempts
)
def autoretry_call(self: Any, url: str, key: str) -> int:
    response = session().post(url, headers={"Idempotency-Key": key}, timeout=10)
    response.raise_for_status()
    return response.status_code
