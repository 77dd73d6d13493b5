"""The webhook receiver as providers meet it: ``integrations webhooks serve`` started as operators start it,
real HTTP deliveries signed as Stripe and Standard Webhooks sign them, and the ledger read afterwards."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from integrations.ledger import schema
from integrations.webhooks.store import EventRecord, EventStatus, EventStore
from tests.conftest import TEST_REDIS_DB, with_redis_db
from tests.e2e.conftest import closed_port

CLI = str(Path(sys.executable).with_name("integrations"))

STRIPE_OLD = "whsec_old_" + uuid.uuid4().hex
STRIPE_NEW = "whsec_new_" + uuid.uuid4().hex
BILLING_KEY = os.urandom(24)
BILLING_SECRET = "whsec_" + base64.b64encode(BILLING_KEY).decode()
CANARY = (
    "body-canary-" + uuid.uuid4().hex
)  # in every refused body: it must reach neither the ledger nor the log

PROVIDERS = """
[providers.stripe]
adapter = "stripe"
base_url = "https://api.stripe.example"
[providers.stripe.webhooks]
scheme = "stripe"
secrets = ["env:TEST_STRIPE_WEBHOOK_OLD", "env:TEST_STRIPE_WEBHOOK_NEW"]

[providers.billing]
adapter = "http"
base_url = "https://billing.example"
[providers.billing.webhooks]
scheme = "standard"
secrets = ["env:TEST_BILLING_WEBHOOK_SECRET"]
max_body_bytes = 2048

[providers.mailer]
adapter = "http"
base_url = "https://mail.example"
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Server:
    url: str
    env: dict[str, str]
    folder: Path
    log: Path
    store: EventStore

    def post(self, provider: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(f"{self.url}/webhooks/{provider}", data=body, headers=headers, timeout=10)


def start(env: dict[str, str], folder: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``integrations webhooks serve`` on a free port, once it answers ``/healthz``."""
    port = closed_port()
    with log.open("ab") as output:
        process = subprocess.Popen(
            [CLI, "webhooks", "serve", "--port", str(port)], env=env, cwd=folder, stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/healthz", timeout=5)
            return process, url
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(log.read_text()) from None
            time.sleep(0.05)  # the server is starting: polled, with a deadline


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def environment(folder: Path, database: str, redis_url: str) -> dict[str, str]:
    """The receiver's environment; ``redis_url`` is where it publishes the events it stores (no worker here
    consumes them: the test's Redis database is flushed after)."""
    providers = folder / "providers.toml"
    providers.write_text(PROVIDERS)
    return dict(
        os.environ,
        REDIS_URL=redis_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"),
        TEST_STRIPE_WEBHOOK_OLD=STRIPE_OLD,
        TEST_STRIPE_WEBHOOK_NEW=STRIPE_NEW,
        TEST_BILLING_WEBHOOK_SECRET=BILLING_SECRET,
        PYTHONUNBUFFERED="1",
    )


@pytest.fixture(scope="module")
def broker_url(redis_server_url: str) -> Iterator[str]:
    """A Redis database of the test run's own for the messages the receiver publishes, flushed after."""
    url = with_redis_db(redis_server_url, TEST_REDIS_DB + 1)
    yield url
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("webhooks")
    database = f"sqlite:///{folder / 'ledger.sqlite3'}"
    schema.upgrade(database)
    env = environment(folder, database, broker_url)
    log = folder / "receiver.log"
    process, url = start(env, folder, log)
    store = EventStore.connect(database)
    try:
        yield Server(url, env, folder, log, store)
    finally:
        stop(process)
        store.dispose()


# -- deliveries as the providers sign them -------------------------------------------------------------


def stripe_event(event_type: str = "payment_intent.succeeded", extra: str = "") -> tuple[str, bytes]:
    event_id = f"evt_{uuid.uuid4().hex}"
    body = {"id": event_id, "object": "event", "type": event_type, "data": {"object": {"note": extra}}}
    return event_id, json.dumps(body).encode()


def stripe_headers(body: bytes, *secrets: str, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    signed = timestamp.encode() + b"." + body
    signatures = [hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest() for secret in secrets]
    return {
        "Content-Type": "application/json",
        "Stripe-Signature": ",".join([f"t={timestamp}", *(f"v1={signature}" for signature in signatures)]),
    }


def standard_headers(event_id: str, body: bytes, key: bytes = BILLING_KEY) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signed = f"{event_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"v1,{signature}",
    }


def events_of(server: Server) -> list[EventRecord]:
    return server.store.list(limit=100_000)


# -- the tests ---------------------------------------------------------------------------------------


def test_a_signed_stripe_delivery_is_stored_as_received_then_answered_202(server: Server) -> None:
    event_id, body = stripe_event()

    answer = server.post("stripe", body, stripe_headers(body, STRIPE_NEW))

    assert answer.status_code == 202, answer.text
    record = server.store.find("stripe", event_id)
    assert record is not None
    stored = {
        "id": record.id,
        "provider": "stripe",
        "event_id": event_id,
        "type": "payment_intent.succeeded",
        "status": "received",
    }
    # The event's fields, as a delivery of one event has always been answered, and the list of them.
    assert answer.json() == stored | {"events": [stored]}
    assert record.body == body  # the bytes received, as signed
    assert record.status is EventStatus.RECEIVED


def test_a_standard_webhooks_delivery_is_stored_under_its_webhook_id(server: Server) -> None:
    event_id = f"msg_{uuid.uuid4().hex}"
    body = json.dumps({"type": "invoice.paid", "data": {"invoice": "in_1"}}).encode()

    answer = server.post("billing", body, standard_headers(event_id, body))

    assert answer.status_code == 202, answer.text
    record = server.store.find("billing", event_id)
    assert record is not None and record.type == "invoice.paid" and record.body == body


def test_the_same_delivery_200_times_at_once_is_stored_once_and_answered_alike(server: Server) -> None:
    event_id, body = stripe_event("charge.refunded")
    headers = stripe_headers(body, STRIPE_OLD, STRIPE_NEW)  # as Stripe signs while a secret is rotated
    sessions = threading.local()

    def deliver(_: int) -> tuple[int, Any]:
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        answer = sessions.session.post(
            f"{server.url}/webhooks/stripe", data=body, headers=headers, timeout=30
        )
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(deliver, range(200)))

    assert {status for status, _ in answers} == {202}
    assert len({json.dumps(answer, sort_keys=True) for _, answer in answers}) == 1
    assert [record.event_id for record in events_of(server)].count(event_id) == 1


# Ten thousand forged or stale deliveries, none stored (about 9 s on two cores).
FORGED = 10_000


def test_forged_and_stale_deliveries_store_nothing(server: Server) -> None:
    before = events_of(server)
    stranger = "whsec_" + uuid.uuid4().hex

    def forged(number: int) -> tuple[str, bytes, dict[str, str], int]:
        event_id, body = stripe_event(extra=CANARY)
        kind = number % 6
        if kind == 0:  # signed with a key the receiver does not have
            return "stripe", body, stripe_headers(body, stranger), 401
        if kind == 1:  # no signature at all
            return "stripe", body, {"Content-Type": "application/json"}, 401
        if kind == 2:  # a genuine signature of another body
            _, other = stripe_event()
            return "stripe", body, stripe_headers(other, STRIPE_NEW), 401
        if kind == 3:  # authentic, but signed an hour ago: a replay
            return "stripe", body, stripe_headers(body, STRIPE_NEW, at=time.time() - 3600), 400
        if kind == 4:  # authentic, but signed an hour ahead
            return "stripe", body, stripe_headers(body, STRIPE_NEW, at=time.time() + 3600), 400
        return "billing", body, standard_headers(event_id, body, key=os.urandom(24)), 401

    deliveries = [forged(number) for number in range(FORGED)]
    local = threading.local()

    def send(delivery: tuple[str, bytes, dict[str, str], int]) -> tuple[int, int]:
        provider, body, headers, want = delivery
        if not hasattr(local, "session"):
            local.session = requests.Session()
        answer = local.session.post(
            f"{server.url}/webhooks/{provider}", data=body, headers=headers, timeout=30
        )
        return answer.status_code, want

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, deliveries))

    assert [got for got, _ in statuses] == [want for _, want in statuses]
    assert events_of(server) == before
    log = server.log.read_text()
    assert "webhook refused: provider=stripe reason=signature_invalid remote=127.0.0.1" in log
    assert "webhook refused: provider=stripe reason=signature_missing remote=127.0.0.1" in log
    assert "webhook refused: provider=stripe reason=timestamp_out_of_tolerance remote=127.0.0.1" in log
    assert "webhook refused: provider=billing reason=signature_invalid remote=127.0.0.1" in log
    for secret in (CANARY, STRIPE_OLD, STRIPE_NEW, BILLING_SECRET):
        assert secret not in log


def test_both_secrets_of_a_rotation_are_accepted_and_no_other(server: Server) -> None:
    old_id, old_body = stripe_event()
    new_id, new_body = stripe_event()
    _, other_body = stripe_event()

    assert server.post("stripe", old_body, stripe_headers(old_body, STRIPE_OLD)).status_code == 202
    assert server.post("stripe", new_body, stripe_headers(new_body, STRIPE_NEW)).status_code == 202
    refused = server.post("stripe", other_body, stripe_headers(other_body, "whsec_retired"))
    assert refused.status_code == 401
    assert refused.json()["error"] == "signature_invalid"
    assert server.store.find("stripe", old_id) is not None
    assert server.store.find("stripe", new_id) is not None


def test_a_body_above_max_body_bytes_is_refused_413_declared_or_not(server: Server) -> None:
    event_id = f"msg_{uuid.uuid4().hex}"
    body = json.dumps({"type": "invoice.paid", "pad": "x" * 4096}).encode()
    headers = standard_headers(event_id, body)

    declared = server.post("billing", body, headers)
    chunks = iter([body[:1000], body[1000:3000], body[3000:]])  # sent without a Content-Length
    chunked = requests.post(f"{server.url}/webhooks/billing", data=chunks, headers=headers, timeout=10)

    for answer in (declared, chunked):
        assert answer.status_code == 413
        assert answer.json()["error"] == "body_too_large"
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    assert server.store.find("billing", event_id) is None


def test_a_provider_without_webhooks_or_unknown_is_404(server: Server) -> None:
    _, body = stripe_event()
    for provider in ("mailer", "nobody"):
        answer = server.post(provider, body, stripe_headers(body, STRIPE_NEW))
        assert answer.status_code == 404
        assert answer.json()["error"] == "unknown_provider"


def test_the_openapi_document_describes_the_routes_and_their_answers(server: Server) -> None:
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()

    deliver = document["paths"]["/webhooks/{provider}"]["post"]
    assert set(deliver["responses"]) == {"202", "400", "401", "404", "413", "503"}
    assert [parameter["name"] for parameter in deliver["parameters"]] == ["provider"]
    assert set(document["paths"]["/healthz"]["get"]["responses"]) == {"200", "503"}
    assert set(document["paths"]) == {"/webhooks/{provider}", "/healthz"}
    accepted = deliver["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][accepted.rsplit("/", 1)[1]]
    assert {"id", "event_id", "type", "events"} <= set(schema["required"])
    assert "one per element for an array of events" in schema["properties"]["events"]["description"]


def test_health_is_200_while_the_ledger_answers(server: Server) -> None:
    answer = requests.get(f"{server.url}/healthz", timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"ledger": "ok"})


def scrape(url: str) -> Samples:
    text = requests.get(url, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def received(samples: Samples, provider: str, event_type: str, result: str) -> float:
    labels = frozenset({"provider": provider, "type": event_type, "result": result}.items())
    return samples.get(("integrations_webhooks_received_total", labels), 0.0)


def test_the_exporter_counts_deliveries_by_result(server: Server) -> None:
    port = closed_port()
    exporter = subprocess.Popen(
        [CLI, "metrics", "serve", "--no-fleet", "--port", str(port)],
        env=server.env,
        cwd=server.folder,
        stderr=subprocess.PIPE,
    )
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                before = scrape(metrics)
                break
            except requests.ConnectionError:
                if exporter.poll() is not None or time.monotonic() > deadline:
                    assert exporter.stderr is not None
                    raise AssertionError(exporter.stderr.read().decode()) from None
                time.sleep(0.05)  # the exporter is starting: polled, with a deadline

        event_id, body = stripe_event("customer.created")
        headers = stripe_headers(body, STRIPE_NEW)
        server.post("stripe", body, headers)
        server.post("stripe", body, headers)
        server.post("stripe", body, headers)
        server.post("stripe", body, stripe_headers(body, "whsec_forged"))
        server.post("stripe", body, stripe_headers(body, STRIPE_NEW, at=time.time() - 3600))
        server.post("billing", b"{}" + b" " * 4096, standard_headers(event_id, b"{}"))
        unparsable = b"not json"
        server.post("billing", unparsable, standard_headers(event_id, unparsable))
        server.post("nobody", body, headers)
        after = scrape(metrics)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)

    def delta(provider: str, event_type: str, result: str) -> float:
        return received(after, provider, event_type, result) - received(before, provider, event_type, result)

    assert delta("stripe", "customer.created", "accepted") == 1
    assert delta("stripe", "customer.created", "duplicate") == 2
    assert delta("stripe", "", "bad_signature") == 1
    assert delta("stripe", "", "stale") == 1
    assert delta("billing", "", "too_large") == 1
    assert delta("billing", "", "invalid") == 1
    assert delta("", "", "unknown_provider") == 1


def test_a_ledger_out_of_reach_answers_503_with_retry_after(tmp_path: Path, broker_url: str) -> None:
    # A database without the ledger's schema: every statement fails as an unreachable one does.
    env = environment(tmp_path, f"sqlite:///{tmp_path / 'empty.sqlite3'}", broker_url)
    process, url = start(env, tmp_path, tmp_path / "receiver.log")
    try:
        _, body = stripe_event()
        delivered = requests.post(
            f"{url}/webhooks/stripe", data=body, headers=stripe_headers(body, STRIPE_NEW), timeout=10
        )
        health = requests.get(f"{url}/healthz", timeout=10)
    finally:
        stop(process)

    assert delivered.status_code == 503 and delivered.headers["Retry-After"].isdigit()
    assert delivered.json()["error"] == "ledger_unavailable"
    assert (health.status_code, health.json()) == (503, {"ledger": "unavailable"})


def test_a_secret_that_cannot_be_resolved_stops_the_server_naming_it(tmp_path: Path, broker_url: str) -> None:
    env = environment(tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite3'}", broker_url)
    del env["TEST_STRIPE_WEBHOOK_NEW"]

    done = subprocess.run(
        [CLI, "webhooks", "serve", "--port", str(closed_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "[providers.stripe.webhooks] key 'secrets.1'" in done.stderr
    assert "TEST_STRIPE_WEBHOOK_NEW" in done.stderr
    assert STRIPE_OLD not in done.stderr + done.stdout
