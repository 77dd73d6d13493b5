"""Webhook events handled on the queue, as they run in production: ``integrations webhooks serve`` stores
and publishes, a real worker runs the application's handlers (registered through
``INTEGRATIONS_EVENT_HANDLERS`` with a module of the test's own on the Python path), and the ledger says
how each event ended."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from integrations.errors import ConfigError
from integrations.ledger import schema
from integrations.ledger.records import NewOperation
from integrations.ledger.store import Ledger
from integrations.resilience.backoff import ExponentialBackoff
from integrations.resilience.retry import RetryPolicy
from integrations.webhooks.events import Event, EventLink
from integrations.webhooks.handling import Handlers, handle, references
from integrations.webhooks.store import EventRecord, EventStatus, EventStore, Relation
from tasks.worker import WorkerProcess, running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db
from tests.e2e.conftest import closed_port
from tests.e2e.test_webhook_receiver import start, stop

CLI = str(Path(sys.executable).with_name("integrations"))
SECRET = "hooks-secret-" + uuid.uuid4().hex
CANARY = "body-canary-" + uuid.uuid4().hex  # in every body: it must reach neither the broker nor a log
PROVIDER = "hooks"
QUEUE = f"integrations.{PROVIDER}"
MAIL = "mail"  # SendGrid, its events signed with ECDSA and batched in arrays
MAIL_KEY = ec.generate_private_key(ec.SECP256R1())
MAIL_PUBLIC_KEY = base64.b64encode(
    MAIL_KEY.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()

PROVIDERS = f"""
[providers.{PROVIDER}]
adapter = "http"
base_url = "https://hooks.example"
[providers.{PROVIDER}.retry]
max_attempts = 3
backoff_base = 0.05
backoff_max = 0.1
[providers.{PROVIDER}.webhooks]
scheme = "hmac_sha256"
header = "X-Signature"
secrets = ["env:TEST_HOOKS_WEBHOOK_SECRET"]

[providers.{MAIL}]
adapter = "sendgrid"
base_url = "https://api.sendgrid.example"
[providers.{MAIL}.webhooks]
scheme = "sendgrid"
secrets = ["env:TEST_SENDGRID_VERIFICATION_KEY"]
"""

# The application's handlers: each call counted in Redis under the event's id, so the test sees how
# often each ran. "order.flaky" fails on its first two calls; "order.broken" until the key "fixed" is
# set; "order.refused" refuses for good. Other types have no handler.
HANDLERS = """
import os

import redis

from integrations.webhooks.handling import PermanentHandlerError

client = redis.Redis.from_url(os.environ["HANDLER_REDIS_URL"])


def counted(event):
    return client.incr(f"calls:{event.event_id}")


def paid(event):
    assert event.payload["data"]["amount"] == 1200
    counted(event)


def flaky(event):
    if counted(event) <= 2:
        raise ConnectionError("the order service did not answer")


def broken(event):
    counted(event)
    if not client.exists("fixed"):
        raise KeyError("order_id")


def refused(event):
    counted(event)
    raise PermanentHandlerError("not an order of this shop")


def handlers():
    return {
        ("mail", "*"): counted,
        ("hooks", "order.paid"): paid,
        ("hooks", "order.flaky"): flaky,
        ("*", "order.broken"): broken,
        ("hooks", "order.refused"): [refused],
    }
"""


@dataclass
class Setup:
    receiver: str
    env: dict[str, str]
    folder: Path
    store: EventStore
    handler_redis: redis.Redis
    app: Celery
    worker: WorkerProcess

    def deliver(self, event_type: str, event_id: str | None = None, url: str | None = None) -> str:
        event_id = event_id or f"evt_{uuid.uuid4().hex}"
        body = event_body(event_id, event_type)
        answer = requests.post(
            f"{url or self.receiver}/webhooks/{PROVIDER}", data=body, headers=signed(body), timeout=10
        )
        assert answer.status_code == 202, answer.text
        return event_id

    def calls(self, event_id: str) -> int:
        return int(self.handler_redis.get(f"calls:{event_id}") or 0)

    def ended(self, event_id: str, timeout: float = 20.0) -> EventRecord:
        """The event once its handling ended (polled, with a deadline)."""
        return self.store_ended(PROVIDER, event_id, timeout)

    def store_ended(self, provider: str, event_id: str, timeout: float = 20.0) -> EventRecord:
        """The event of ``provider`` once its handling ended (polled, with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.store.find(provider, event_id)
            if record is not None and record.status.ended:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"event {event_id} did not end: {record}\n{self.worker.log_tail()}")
            time.sleep(0.05)  # the worker is handling it: polled, with a deadline


def event_body(event_id: str, event_type: str) -> bytes:
    return json.dumps({"id": event_id, "type": event_type, "data": {"amount": 1200, "note": CANARY}}).encode()


def sendgrid_signed(body: bytes) -> dict[str, str]:
    """Signed as SendGrid's Signed Event Webhook signs: ECDSA P-256, SHA-256, over timestamp + body."""
    timestamp = str(int(time.time()))
    signature = MAIL_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def sendgrid_batch(*events: dict[str, str]) -> bytes:
    """A SendGrid Event Webhook body: a JSON array of events, each with its own ``sg_event_id``."""
    return (
        json.dumps([{"email": "ann@example.com", "timestamp": 1767225600} | e for e in events]).encode()
        + b"\r\n"
    )


def signed(body: bytes) -> dict[str, str]:
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Signature": signature}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def setup(
    request: pytest.FixtureRequest, redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp(f"handling-{request.param}")
    if request.param == "sqlite":
        database = f"sqlite:///{folder / 'ledger.sqlite3'}"
        schema.upgrade(database)
    else:
        database = request.getfixturevalue("postgres_ledger_url")
    (folder / "shop_handlers.py").write_text(textwrap.dedent(HANDLERS))
    (folder / "providers.toml").write_text(PROVIDERS)
    broker = with_redis_db(redis_server_url, TEST_REDIS_DB + 2)
    handler_url = with_redis_db(redis_server_url, TEST_REDIS_DB - 1)
    env = dict(
        os.environ,
        REDIS_URL=broker,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(folder / "providers.toml"),
        INTEGRATIONS_EVENT_HANDLERS="shop_handlers:handlers",
        INTEGRATIONS_SWEEP_INTERVAL="1",
        PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
        PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"),
        TEST_HOOKS_WEBHOOK_SECRET=SECRET,
        TEST_SENDGRID_VERIFICATION_KEY=MAIL_PUBLIC_KEY,
        HANDLER_REDIS_URL=handler_url,
        PYTHONUNBUFFERED="1",
    )
    env.pop("BROKER_URL", None)
    app = Celery("client", broker=broker, backend=broker)
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    app.backend.client.flushdb()
    handler_redis = redis.Redis.from_url(handler_url)
    handler_redis.flushdb()
    store = EventStore.connect(database)
    process, url = start(env, folder, folder / "receiver.log")
    try:
        queues = [QUEUE, f"integrations.{MAIL}", "integrations.maintenance"]
        with running_worker(app, env, queues, folder, loglevel="INFO") as worker:
            yield Setup(url, env, folder, store, handler_redis, app, worker)
    finally:
        stop(process)
        store.dispose()
        handler_redis.flushdb()
        handler_redis.close()
        app.backend.client.flushdb()
        app.close()


def test_a_delivery_sent_1000_times_is_handled_once(setup: Setup) -> None:
    event_id = f"evt_{uuid.uuid4().hex}"
    body = event_body(event_id, "order.paid")
    local = threading.local()

    def deliver(_: int) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        url = f"{setup.receiver}/webhooks/{PROVIDER}"
        return local.session.post(url, data=body, headers=signed(body), timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(deliver, range(1000))) == {202}

    record = setup.ended(event_id)
    assert record.status is EventStatus.HANDLED
    assert record.attempts == 1 and record.error is None
    assert setup.calls(event_id) == 1
    # One message was published (for the first delivery), and it was taken.
    assert setup.app.backend.client.llen(QUEUE) == 0


def test_a_handler_failing_twice_is_tried_again_until_it_succeeds(setup: Setup) -> None:
    event_id = setup.deliver("order.flaky")

    record = setup.ended(event_id)

    assert record.status is EventStatus.HANDLED
    assert record.attempts == 3 and record.error is None
    assert setup.calls(event_id) == 3


def test_a_handler_always_failing_ends_dead_then_a_replay_handles_it(setup: Setup) -> None:
    event_id = setup.deliver("order.broken")

    record = setup.ended(event_id)

    assert record.status is EventStatus.DEAD
    assert record.attempts == 3  # the provider's max_attempts
    assert record.error is not None and record.error["type"] == "retries_exhausted"
    assert "KeyError" in record.error["message"]
    assert setup.calls(event_id) == 3

    # The bug is fixed; the operator replays the event.
    setup.handler_redis.set("fixed", "1")
    replay = subprocess.run(
        [CLI, "events", "replay", record.id, "--reason", "order service fixed", "--actor", "ops@test"],
        env=setup.env,
        cwd=setup.folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert f"replaying event {record.id}" in replay.stdout

    again = setup.ended(event_id)
    assert again.status is EventStatus.HANDLED
    assert again.attempts == 1  # a fresh count
    assert setup.calls(event_id) == 4
    audit = subprocess.run(
        [CLI, "audit", "list", "--json"], env=setup.env, cwd=setup.folder, capture_output=True, text=True
    )
    [entry] = [entry for entry in json.loads(audit.stdout) if entry["target"] == record.id]
    assert entry["actor"] == "ops@test" and entry["reason"] == "order service fixed"
    assert entry["details"]["was"] == "dead" and entry["details"]["event_id"] == event_id


def test_a_handler_refusing_for_good_ends_failed_at_once(setup: Setup) -> None:
    event_id = setup.deliver("order.refused")

    record = setup.ended(event_id)

    assert record.status is EventStatus.FAILED
    assert record.attempts == 1 and setup.calls(event_id) == 1
    assert record.error is not None and "PermanentHandlerError" in record.error["message"]


def test_an_event_type_without_handler_ends_unhandled(setup: Setup) -> None:
    event_id = setup.deliver("order.shipped")

    record = setup.ended(event_id)

    assert record.status is EventStatus.UNHANDLED
    assert record.attempts == 1 and record.error is None


def test_an_event_whose_message_was_not_sent_is_handled_after_a_sweep(setup: Setup) -> None:
    # A second receiver whose broker cannot be reached: it stores the event and answers 202 all the same.
    env = dict(setup.env, BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0")
    log = setup.folder / "receiver-without-broker.log"
    process, url = start(env, setup.folder, log)
    try:
        event_id = setup.deliver("order.paid", url=url)
    finally:
        stop(process)
    assert "stays received, and the sweeper sends it" in log.read_text()
    record = setup.store.find(PROVIDER, event_id)
    assert record is not None and record.status is EventStatus.RECEIVED and record.attempts == 0

    # Beat's sweep (its grace here is a second), asked until it has sent the event.
    deadline = time.monotonic() + 20
    sweep = "integrations.maintenance.sweep"
    while setup.app.send_task(sweep, queue="integrations.maintenance").get(timeout=20) == 0:
        assert time.monotonic() < deadline, setup.worker.log_tail()
        time.sleep(0.2)  # the grace is still running: ask again shortly

    assert setup.ended(event_id).status is EventStatus.HANDLED
    assert setup.calls(event_id) == 1


def test_a_sendgrid_batch_of_three_is_three_events_each_handled_and_linked(setup: Setup) -> None:
    ledger = Ledger(setup.store.engine)
    keys = [f"mail-{uuid.uuid4().hex}" for _ in range(2)]
    sent, bounced = (
        ledger.enqueue(NewOperation(MAIL, "send_mail", key, "fingerprint", {}, None))[0] for key in keys
    )
    ids = [f"sg-{uuid.uuid4().hex}" for _ in range(4)]
    batch = sendgrid_batch(
        {"sg_event_id": ids[0], "event": "delivered", "idempotency_key": keys[0]},
        {"sg_event_id": ids[1], "event": "bounce", "idempotency_key": keys[1], "note": CANARY},
        {"sg_event_id": ids[2], "event": "open", "idempotency_key": keys[0]},
    )
    url = f"{setup.receiver}/webhooks/{MAIL}"

    answer = requests.post(url, data=batch, headers=sendgrid_signed(batch), timeout=10)

    assert answer.status_code == 202, answer.text
    assert [event["event_id"] for event in answer.json()["events"]] == ids[:3]
    records = [setup.store_ended(MAIL, event_id) for event_id in ids[:3]]
    assert [(record.type, record.status) for record in records] == [
        ("delivered", EventStatus.HANDLED),
        ("bounce", EventStatus.HANDLED),
        ("open", EventStatus.HANDLED),
    ]
    assert [setup.calls(event_id) for event_id in ids[:3]] == [1, 1, 1]
    # Each event of the batch is linked by itself, to the operation it names.
    assert [(record.operation_id, record.relation) for record in records] == [
        (sent.id, Relation.CONFIRMS),
        (bounced.id, Relation.CONTRADICTS),
        (None, None),
    ]
    bounce = setup.store.find(MAIL, ids[1])
    assert bounce is not None and bounce.body is not None
    assert json.loads(bounce.body)["sg_event_id"] == ids[1]  # the element, not the batch

    # SendGrid delivers again, batched otherwise: only the event not stored yet is new.
    again = sendgrid_batch(
        {"sg_event_id": ids[2], "event": "open", "idempotency_key": keys[0]},
        {"sg_event_id": ids[3], "event": "click"},
    )
    redelivered = requests.post(url, data=again, headers=sendgrid_signed(again), timeout=10)

    assert redelivered.status_code == 202, redelivered.text
    stored_before, new = redelivered.json()["events"]
    assert (stored_before["id"], new["event_id"]) == (records[2].id, ids[3])
    assert setup.store_ended(MAIL, ids[3]).status is EventStatus.HANDLED
    assert [setup.calls(event_id) for event_id in ids] == [1, 1, 1, 1]
    assert sorted(
        record.event_id for record in setup.store.list(provider=MAIL) if record.event_id in ids
    ) == sorted(ids)


def test_no_body_reaches_a_log(setup: Setup) -> None:
    for log in [setup.worker.log, *setup.folder.glob("receiver*.log")]:
        assert CANARY not in log.read_text(errors="replace"), log


def test_handlers_match_the_most_specific_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ordered_handlers.py").write_text(
        textwrap.dedent("""
        def specific(event): pass
        def any_type(event): pass
        def any_provider(event): pass
        def anything(event): pass
        def handlers():
            return {("*", "*"): anything, ("*", "a.b"): any_provider, ("p", "*"): [any_type], ("p", "a.b"): specific}
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    loaded = Handlers.load(references("ordered_handlers:handlers"))

    assert [handler.__name__ for handler in loaded.matching("p", "a.b")] == [
        "specific",
        "any_type",
        "any_provider",
        "anything",
    ]
    assert [handler.__name__ for handler in loaded.matching("q", "c.d")] == ["anything"]


@pytest.mark.parametrize(
    ("source", "reference", "said"),
    [
        (None, "no_such_module_here:handlers", "cannot be loaded: ModuleNotFoundError"),
        ("", "empty_handlers:handlers", "has no attribute 'handlers'; is the module on the Python path?"),
        ("def handlers(): return {}", "bad_handlers_a", "write it as module:callable"),
        ("def handlers(): return [1]", "bad_handlers_b:handlers", "returned list; return a mapping"),
        ("def handlers(): return {'x': print}", "bad_handlers_c:handlers", "key 'x' is not (provider or '*'"),
        (
            "def handlers(): return {('p', 't'): 3}",
            "bad_handlers_d:handlers",
            "the handler of ('p', 't') is int",
        ),
    ],
)
def test_a_bad_handler_reference_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str | None, reference: str, said: str
) -> None:
    if source is not None:
        (tmp_path / f"{reference.partition(':')[0]}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError) as raised:
        Handlers.load([reference])

    assert f"INTEGRATIONS_EVENT_HANDLERS entry {reference!r}" in str(raised.value)
    assert said in str(raised.value)


def test_an_event_its_adapter_links_is_recorded_against_the_operation(ledger: Ledger) -> None:
    operation, _ = ledger.enqueue(
        NewOperation("shop", "request", f"order-{uuid.uuid4().hex}", "fingerprint", {}, None)
    )
    store = EventStore(ledger.engine)
    policy = RetryPolicy(3, ExponentialBackoff(base=0.05, cap=0.1))

    def link(event: Event) -> EventLink | None:
        key = event.payload.get("order")
        return EventLink(Relation.CONTRADICTS, idempotency_key=key) if key else None

    linked, _ = store.store(
        "shop", "evt_1", "charge.failed", json.dumps({"order": operation.idempotency_key}).encode()
    )
    elsewhere, _ = store.store("shop", "evt_2", "charge.failed", json.dumps({"order": "not-ours"}).encode())
    unnamed, _ = store.store("shop", "evt_3", "charge.failed", b"{}")

    outcomes = [
        handle(store, record.id, Handlers(), policy, ledger=ledger, link=link)
        for record in (linked, elsewhere, unnamed)
    ]

    assert [outcome.outcome for outcome in outcomes] == ["handled", "unhandled", "unhandled"]
    assert outcomes[0].record is not None
    assert (outcomes[0].record.operation_id, outcomes[0].record.relation) == (
        operation.id,
        Relation.CONTRADICTS,
    )
    assert [record.id for record in store.for_operation(operation.id)] == [linked.id]


def test_an_adapters_own_handlers_run_first_then_the_registered_ones(ledger: Ledger) -> None:
    store = EventStore(ledger.engine)
    policy = RetryPolicy(3, ExponentialBackoff(base=0.05, cap=0.1))
    ran: list[str] = []
    registered = Handlers({("shop", "charge.failed"): (lambda event: ran.append("registered"),)})
    own = {
        "charge.failed": [lambda event: ran.append("adapter, by type")],
        "*": [lambda event: ran.append("adapter, any type")],
    }
    record, _ = store.store("shop", f"evt_{uuid.uuid4().hex}", "charge.failed", b"{}")
    other, _ = store.store("shop", f"evt_{uuid.uuid4().hex}", "charge.refunded", b"{}")

    outcomes = [handle(store, each.id, registered, policy, own=own) for each in (record, other)]

    assert ran == ["adapter, by type", "adapter, any type", "registered", "adapter, any type"]
    assert [outcome.outcome for outcome in outcomes] == ["handled", "handled"]
