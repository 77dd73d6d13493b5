"""Redis for the shared breaker and throttle: the client, and the Lua scripts shipped as package files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from integrations.errors import ConfigError

# Fail fast: a worker waiting on a Redis that does not answer holds a slot other work could use.
SOCKET_TIMEOUT = 2.0

# A URL of one node of a Redis Cluster: the client finds the other nodes and each slot's owner from it.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def redis_client(url: str) -> redis.Redis:
    """A client that hands back ``str`` (every caller in this package expects that).

    ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) gives a ``RedisCluster``. It serves
    every command the guards send, since each call touches the keys of one provider, which share a hash
    slot (``integrations.keys``); it is typed as ``Redis`` so that callers need not tell the two apart.
    """
    options = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
    }
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme)
    if scheme is None:
        return redis.Redis.from_url(url, **options)
    if parts.path.strip("/") not in ("", "0") or "db=" in parts.query:
        where = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
        raise ConfigError(
            f"{where}: a Redis Cluster has only database 0: leave the database out of the URL "
            f"({parts.scheme}://host:port)"
        )
    cluster = RedisCluster.from_url(  # type: ignore[no-untyped-call]
        urlunsplit(parts._replace(scheme=scheme)), **options
    )
    return cast(redis.Redis, cluster)


def server_time_ms(client: redis.Redis, key: str) -> int:
    """The clock of the Redis that holds ``key``, in ms: the one clock every worker shares. On a Redis
    Cluster it is the clock of the node that owns ``key``'s slot, which the scripts on that provider's keys
    read (TIME alone names no key, and redis-py refuses it in a cluster pipeline)."""
    answer: Any = client.eval("return redis.call('TIME')", 1, key)  # typed as maybe-awaitable
    seconds, micros = answer
    return int(seconds) * 1000 + int(micros) // 1000


@cache
def source(name: str, package: str = "integrations.resilience") -> str:
    """The Lua script ``name``, shipped as ``lua/<name>.lua`` in ``package``'s files."""
    return (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Script:
    """A Lua script bound to a client: EVALSHA, and after a Redis that lost it (restarted empty, flushed)
    SCRIPT LOAD and EVALSHA once more.

    Written here rather than redis-py's ``Script``, which looks up whether its client is a pipeline on
    every call (a third of a call's client time on the hot path). On a plain ``redis.Redis`` the command is
    packed here and sent on a connection of the client's pool, with the client's retries: redis-py's packer
    checks each of a call's twenty-odd arguments against four types, and its command path adds as much
    again (about 20 µs of a 110 to 150 µs call here). A Redis Cluster, or a client held to one connection, is sent
    the command through redis-py."""

    __slots__ = ("_encoding", "_head", "_pool", "client", "sha", "source")

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        plain = type(client) is redis.Redis and client.connection is None
        self._pool = client.connection_pool if plain else None
        self._encoding = client.get_encoder().encoding if plain else "utf-8"
        self._head = _bulk(b"EVALSHA") + _bulk(self.sha.encode())

    def __call__(
        self, keys: Sequence[str | bytes] = (), args: Sequence[str | bytes | int | float] = ()
    ) -> Any:
        try:
            return self._run(keys, args)
        except NoScriptError:
            self.client.script_load(self.source)
            return self._run(keys, args)

    def _run(self, keys: Sequence[str | bytes], args: Sequence[str | bytes | int | float]) -> Any:
        pool = self._pool
        if pool is None:
            keys_and_args: tuple[Any, ...] = (*keys, *args)
            return self.client.evalsha(self.sha, len(keys), *keys_and_args)
        parts = [_bulk(self._encoded(part)) for part in (len(keys), *keys, *args)]
        command = b"*%d\r\n%b%b" % (len(parts) + 2, self._head, b"".join(parts))
        connection: Any = pool.get_connection()
        try:
            return connection.retry.call_with_retry(
                lambda: _exchange(connection, command), lambda _error: connection.disconnect()
            )
        finally:
            pool.release(connection)

    def _encoded(self, value: str | bytes | int | float) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode(self._encoding)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return repr(value).encode()
        raise redis.DataError(
            f"a script argument must be text, bytes or a number, not {type(value).__name__}"
        )


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _exchange(connection: Any, command: bytes) -> Any:
    """One command sent and its answer read (an error answer raised, as redis-py raises it)."""
    connection.send_packed_command([command])
    return connection.read_response()


def script(client: redis.Redis, name: str, *parts: str) -> Script:
    """A script bound to ``client``.

    ``parts``: scripts that ``name`` calls as local functions of the same names, each with the ``KEYS``
    and ``ARGV`` it would have been given alone, so that one round trip runs several of them. Written by
    hand because Redis has no way for one script to call another (functions, since Redis 7, are called
    one per FCALL as well)."""
    return Script(client, composed(name, parts))


@cache
def composed(name: str, parts: tuple[str, ...] = ()) -> str:
    functions = [f"local function {part}(KEYS, ARGV)\n{source(part)}end\n" for part in parts]
    return "".join(functions) + source(name)
