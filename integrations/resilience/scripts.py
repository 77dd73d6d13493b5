"""Redis for the shared breaker and throttle: the client, and the Lua scripts shipped as package files."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script

# Fail fast: a worker waiting on a Redis that does not answer holds a slot other work could use.
SOCKET_TIMEOUT = 2.0


def redis_client(url: str) -> redis.Redis:
    """A client that hands back ``str`` (every caller in this package expects that)."""
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )


@cache
def source(name: str) -> str:
    return (files("integrations.resilience") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def script(client: redis.Redis, name: str) -> Script:
    """A script bound to ``client``: EVALSHA, falling back to EVAL once after a Redis restart."""
    return client.register_script(source(name))
