"""The webhook receiver under load: ``integrations webhooks serve`` against a bare endpoint of the same
framework and server that writes the same row, both fed the same signed Stripe deliveries by a local load
generator (threads, each with its own keep-alive connection)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

import redis
import requests
from sqlalchemy import func, select

from bench.harness import ROOT, Row
from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import WebhookEvent
from integrations.testing.redis_server import redis_for

SECRET = "whsec_bench_" + uuid.uuid4().hex
PROVIDERS = """
[providers.stripe]
adapter = "http"
base_url = "http://127.0.0.1:9"
[providers.stripe.webhooks]
scheme = "stripe"
secrets = ["env:BENCH_STRIPE_WEBHOOK_SECRET"]
"""
THREADS = 8
PER_THREAD = 250
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _serving(command: list[str], env: dict[str, str], port: int, folder: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with (folder / f"server-{port}.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.post(f"{url}/webhooks/none", data=b"{}", timeout=1)
                    break
                except requests.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{command} did not start: see {log.name}") from None
                    time.sleep(0.1)  # the server is starting: polled, with a deadline
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _signed(event_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": event_id, "type": "payment_intent.succeeded", "data": {"object": {}}}).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={stamp},v1={signature}", "Content-Type": "application/json"}


def _load(url: str, run: str) -> tuple[float, list[float], int]:
    """Requests per second, each request's latency (s), and how many were acknowledged (202)."""
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    accepted = [0] * THREADS
    start = threading.Barrier(THREADS + 1)

    def client(index: int) -> None:
        with requests.Session() as session:
            start.wait()
            for n in range(PER_THREAD):
                body, headers = _signed(f"evt_{run}_{index}_{n}")
                began = time.perf_counter()
                answer = session.post(f"{url}/webhooks/stripe", data=body, headers=headers, timeout=30)
                latencies[index].append(time.perf_counter() - began)
                accepted[index] += answer.status_code == 202

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for each in latencies for x in each]
    return len(flat) / elapsed, flat, sum(accepted)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stored(database: str, run: str) -> int:
    engine = create_ledger_engine(database)
    with engine.connect() as connection:
        count = connection.execute(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.event_id.like(f"evt_{run}_%"))
        ).scalar_one()
    engine.dispose()
    return int(count)


def receiver(folder: Path) -> list[Row]:
    # The receiver publishes each event it stores, for workers to handle: to a Redis database of the
    # benchmarks' own, flushed after (no worker runs here; the figure is the acknowledgement).
    with redis_for(os.environ.get("REDIS_URL")) as (server_url, _private):
        redis_url = server_url.rsplit("/", 1)[0] + "/11"
        try:
            return _receiver(folder, redis_url)
        finally:
            redis.Redis.from_url(redis_url).flushdb()


def _receiver(folder: Path, redis_url: str) -> list[Row]:
    database = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{folder / 'webhooks.sqlite3'}"
    schema.upgrade(database)
    providers = folder / "webhook-providers.toml"
    providers.write_text(PROVIDERS)
    env = dict(
        os.environ,
        DATABASE_URL=database,
        REDIS_URL=redis_url,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        BENCH_STRIPE_WEBHOOK_SECRET=SECRET,
        PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"),
        PYTHONPATH=str(ROOT),
    )
    cli = str(Path(sys.executable).with_name("integrations"))
    ours_port, bare_port = _free_port(), _free_port()
    servers = {
        "ours": [cli, "webhooks", "serve", "--port", str(ours_port)],
        "bare": [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.bare_receiver:app",
            "--port",
            str(bare_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
    }
    figures: dict[str, list[tuple[float, list[float], int, int]]] = {"ours": [], "bare": []}
    for name, command in servers.items():
        port = ours_port if name == "ours" else bare_port
        with _serving(command, env, port, folder) as url:
            for _ in range(ROUNDS):
                run = uuid.uuid4().hex[:8]
                rate, latencies, accepted = _load(url, run)
                figures[name].append((rate, latencies, accepted, _stored(database, run)))
    rows = []
    ours_rate = median(r for r, *_ in figures["ours"])
    bare_rate = median(r for r, *_ in figures["bare"])
    lost = sum(accepted - stored for _, _, accepted, stored in figures["ours"])
    sent = THREADS * PER_THREAD * ROUNDS
    acknowledged = sum(accepted for _, _, accepted, _ in figures["ours"])
    rows.append(
        Row(
            "receiver",
            "deliveries acknowledged per second",
            ours_rate,
            bare_rate,
            "a bare FastAPI endpoint writing the same row",
            "ok"
            if lost == 0 and acknowledged == sent
            else f"MISSED: {sent - acknowledged} not acknowledged, {lost} lost",
            f"ratio {ours_rate / bare_rate:.2f}; {THREADS} clients x {PER_THREAD} deliveries, median of {ROUNDS} "
            f"rounds; {acknowledged} acknowledged, {lost} acknowledged and not stored",
        )
    )
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        ours = median(_quantile(lat, q) for _, lat, _, _ in figures["ours"]) * 1000
        bare = median(_quantile(lat, q) for _, lat, _, _ in figures["bare"]) * 1000
        rows.append(Row("receiver", f"{label} acknowledgement latency, ms", ours, bare, "the same", "-", ""))
    return rows
