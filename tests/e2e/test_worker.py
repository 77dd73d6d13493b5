"""End to end: send_task -> real worker process -> provider simulator -> ledger -> result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from celery.result import AsyncResult
from kombu import Connection, Exchange, Queue

from integrations import keys
from integrations.ledger.models import OperationStatus
from integrations.resilience.scripts import server_time_ms
from integrations.testing.provider import ProviderSimulator
from tasks.worker import running_worker
from tests.e2e.conftest import CANARY, Worker, unique
from tests.fakes.hubspot import FakeHubSpot

TIMEOUT = 30


def test_an_operation_succeeds_with_the_documented_result(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("pay")
    result = worker.send(
        key, {"method": "POST", "path": "/v1/payments", "json": {"amount": 1200}}, request_id="rq-1"
    )
    value = result.get(timeout=TIMEOUT)
    assert result.state == "SUCCESS"
    assert value["status"] == "succeeded" and value["replayed"] is False and value["attempts"] == 1
    assert value["response"] == {"status_code": 200, "body": value["response"]["body"]}
    assert value["response"]["body"]["json"] == {"amount": 1200}
    [call] = sim.calls(idempotency_key=key)
    assert (call.method, call.path, call.headers["x-request-id"]) == ("POST", "/v1/payments", "rq-1")
    record = worker.ledger.find("sim", key)
    assert record is not None and record.status is OperationStatus.SUCCEEDED
    assert record.id == value["operation_id"]


def test_transient_failures_are_retried_by_the_worker(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("pay")
    value = worker.send(key, {"method": "POST", "path": "/v1/payments?fail=2"}).get(timeout=TIMEOUT)
    assert value["attempts"] == 3
    calls = sim.calls(idempotency_key=key)
    assert [c.status for c in calls] == [503, 503, 200]
    assert len({c.headers["x-request-id"] for c in calls}) == 1


def test_retry_after_holds_the_next_attempt_back(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("pay")
    result = worker.send(key, {"method": "POST", "path": "/v1/payments?fail=1&fail_status=429&retry_after=2"})
    assert result.get(timeout=TIMEOUT)["attempts"] == 2
    first, second = sim.calls(idempotency_key=key)
    assert first.status == 429 and second.status == 200
    assert (
        second.received_at - first.received_at >= 2.0
    )  # the provider's earliest time, not the 0.2 s backoff cap


def test_a_rejection_fails_once_and_the_ledger_has_the_detail(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("pay")
    result = worker.send(key, {"method": "POST", "path": "/v1/payments?status=422"})
    with pytest.raises(Exception, match=r"^provider_rejected: ") as raised:
        result.get(timeout=TIMEOUT)
    assert type(raised.value).__name__ == "OperationFailed"
    assert result.state == "FAILURE"
    assert len(sim.calls(idempotency_key=key)) == 1
    record = worker.ledger.find("sim", key)
    assert record is not None and record.status is OperationStatus.FAILED
    assert record.error is not None
    assert (record.error["type"], record.error["status_code"]) == ("provider_rejected", 422)
    assert record.error["body"]["error"]["message"] == "simulated 422"


def test_an_unreachable_provider_ends_dead_after_its_attempts(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("down")
    result = worker.send(key, {"method": "POST", "path": "/v1/x"}, provider="down")
    with pytest.raises(Exception, match=r"^retries_exhausted: .*cannot connect"):
        result.get(timeout=TIMEOUT)
    record = worker.ledger.find("down", key)
    assert record is not None and (record.status, record.attempts) == (OperationStatus.DEAD, 2)


def test_an_invalid_message_is_recorded_and_never_sent(worker: Worker, sim: ProviderSimulator) -> None:
    result = worker.send(None, {"method": "POST", "path": "/v1/payments"})
    with pytest.raises(Exception, match=r"^invalid_request: .*idempotency_key"):
        result.get(timeout=TIMEOUT)
    key = unique("bad")
    with pytest.raises(Exception, match=r"^invalid_request: .*payload.method"):
        worker.send(key, {"path": "/v1/payments"}).get(timeout=TIMEOUT)
    assert sim.calls(path="/v1/payments") == []
    record = worker.ledger.find("sim", key)
    assert record is not None and record.error is not None and record.error["type"] == "invalid_request"


def test_duplicates_sent_at_once_make_one_call_and_share_its_outcome(
    worker: Worker, sim: ProviderSimulator
) -> None:
    key = unique("dup")
    payload = {"method": "POST", "path": "/v1/payments?delay=0.5", "json": {"amount": 5}}
    results = [worker.send(key, payload) for _ in range(12)]
    values = [r.get(timeout=TIMEOUT) for r in results]
    assert len(sim.calls(idempotency_key=key)) == 1
    assert {v["operation_id"] for v in values} == {values[0]["operation_id"]}
    assert sum(not v["replayed"] for v in values) == 1
    assert all(v["response"] == values[0]["response"] for v in values)


def test_same_key_with_another_payload_is_a_conflict(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("conf")
    worker.send(key, {"method": "POST", "path": "/v1/payments", "json": {"amount": 1}}).get(timeout=TIMEOUT)
    with pytest.raises(Exception, match=r"^idempotency_conflict: "):
        worker.send(key, {"method": "POST", "path": "/v1/payments", "json": {"amount": 2}}).get(
            timeout=TIMEOUT
        )
    assert len(sim.calls(idempotency_key=key)) == 1
    record = worker.ledger.find("sim", key)
    assert record is not None and record.conflicts == 1 and record.last_conflict_at is not None


def test_a_pickled_message_is_refused(worker: Worker, sim: ProviderSimulator, redis_server_url: str) -> None:
    key = unique("pickle")
    broker = worker.env["REDIS_URL"]
    body = ((), {"payload": {"method": "POST", "path": "/v1/pickled"}, "idempotency_key": key}, {})
    with Connection(broker) as connection:
        producer = connection.Producer(serializer="pickle")
        queue = Queue("integrations.sim", Exchange("integrations.sim"), routing_key="integrations.sim")
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key="integrations.sim",
            declare=[queue],
            headers={
                "lang": "py",
                "task": "integrations.sim.request",
                "id": key,
                "argsrepr": "",
                "kwargsrepr": "",
            },
        )
    client = redis.Redis.from_url(broker)
    deadline = time.monotonic() + TIMEOUT
    while client.llen("integrations.sim") or client.hlen("unacked"):
        assert time.monotonic() < deadline, "the worker never took the pickled message off the queue"
        time.sleep(0.05)
    # A message after it is served, so the worker has moved past the pickled one without running it.
    worker.send(unique("after"), {"method": "GET", "path": "/v1/after"}).get(timeout=TIMEOUT)
    assert sim.calls(path="/v1/pickled") == []
    assert worker.ledger.find("sim", key) is None
    assert (
        "ContentDisallowed" in worker.process.log.read_text()
        or "disallowed" in worker.process.log.read_text().lower()
    )
    client.close()


def test_a_killed_worker_process_gives_its_message_back(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("kill")
    result = worker.send(key, {"method": "POST", "path": "/v1/payments?delay=0.8"})
    deadline = time.monotonic() + TIMEOUT
    while not sim.calls(idempotency_key=key):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for pid in worker.process.children():  # the call is in flight in one of them
        os.kill(pid, signal.SIGKILL)
    value = result.get(timeout=60)
    assert value["status"] == "succeeded"
    calls = sim.calls(idempotency_key=key)
    assert len(calls) == 2 and value["attempts"] == 2  # the second attempt waited out the first's lease
    assert calls[1].received_at - calls[0].received_at >= 7.5  # the lease: 3 x timeout (1 s) + 5 s


def test_many_operations_in_parallel_all_end_recorded(worker: Worker, sim: ProviderSimulator) -> None:
    keys = [unique("bulk") for _ in range(40)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: worker.send(k, {"method": "POST", "path": "/v1/bulk"}), keys))
    values = [r.get(timeout=TIMEOUT) for r in results]
    assert [v["idempotency_key"] for v in values] == keys
    assert len(sim.calls(path="/v1/bulk")) == 40
    for key in keys:
        record = worker.ledger.find("sim", key)
        assert record is not None and record.status is OperationStatus.SUCCEEDED


def test_a_dead_letter_replayed_from_the_cli_succeeds(worker: Worker, sim: ProviderSimulator) -> None:
    key = unique("replay")
    sim.set_outage(503)
    with pytest.raises(Exception, match=r"^retries_exhausted: "):
        worker.send(key, {"method": "POST", "path": "/v1/payments"}).get(timeout=TIMEOUT)
    sim.set_outage(None)
    record = worker.ledger.find("sim", key)
    assert record is not None and record.status is OperationStatus.DEAD and record.attempts == 3

    cli = Path(sys.executable).with_name("integrations")
    out = subprocess.run(
        [str(cli), "dlq", "replay", record.id], env=worker.env, capture_output=True, text=True, check=True
    ).stdout
    task_id = out.rsplit("as task ", 1)[1].strip()
    value = AsyncResult(task_id, app=worker.app).get(timeout=TIMEOUT)
    assert value["status"] == "succeeded" and value["operation_id"] == record.id and value["attempts"] == 1
    replayed = worker.ledger.get(record.id)
    assert replayed is not None and replayed.status is OperationStatus.SUCCEEDED and replayed.replays == 1
    calls = sim.calls(idempotency_key=key)
    assert [c.status for c in calls] == [503, 503, 503, 200]


def test_an_attempt_that_outruns_its_time_limit_is_cut_and_retried(
    worker: Worker, sim: ProviderSimulator
) -> None:
    # Each byte arrives within the 0.5 s read timeout, but the answer takes 4 s: the soft time limit
    # (3 x timeout) ends the attempt, so no attempt outlives its lease (3 x timeout + 5 s).
    key = unique("slow")
    result = worker.send(key, {"method": "POST", "path": "/v1/payments?trickle=4"}, provider="slow")
    with pytest.raises(Exception, match=r"^retries_exhausted: .*time limit"):
        result.get(timeout=TIMEOUT)
    first, second = sim.calls(idempotency_key=key)
    assert second.received_at - first.received_at >= 1.5
    record = worker.ledger.find("slow", key)
    assert record is not None and (record.status, record.attempts) == (OperationStatus.DEAD, 2)


def test_a_worker_refuses_to_start_on_an_unmigrated_ledger(worker: Worker, tmp_path: Path) -> None:
    env = dict(worker.env, DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with (
        pytest.raises(RuntimeError, match="integrations db upgrade"),
        running_worker(worker.app, env, ["integrations.nothing"], tmp_path, startup_timeout=30),
    ):
        pass


def cli(worker: Worker, *args: str) -> str:
    binary = Path(sys.executable).with_name("integrations")
    return subprocess.run(
        [str(binary), *args], env=worker.env, capture_output=True, text=True, check=True
    ).stdout


def test_a_429_pauses_the_provider_for_every_worker_process(worker: Worker, sim: ProviderSimulator) -> None:
    first = worker.send(
        unique("429"), {"method": "POST", "path": "/v1/p?fail=1&fail_status=429&retry_after=2"}
    )
    client = redis.Redis.from_url(worker.env["REDIS_URL"])
    deadline = time.monotonic() + TIMEOUT
    # until the worker has seen the 429 and paused the provider (a pause ending in the future)
    while float(client.hget(keys.bucket("sim"), "pause") or 0) <= server_time_ms(client, keys.bucket("sim")):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.close()
    others = [worker.send(unique("after"), {"method": "POST", "path": "/v1/q"}) for _ in range(4)]
    for result in [first, *others]:
        result.get(timeout=TIMEOUT)
    [rate_limited] = [c for c in sim.calls(path="/v1/p") if c.status == 429]
    after = sim.calls(path="/v1/q")
    assert len(after) == 4  # each of the others called the provider once, all after the pause
    assert all(c.received_at - rate_limited.received_at >= 2.0 for c in after)


def test_a_live_limit_is_seen_by_the_running_worker(worker: Worker, sim: ProviderSimulator) -> None:
    assert "1/s" in cli(worker, "limits", "set", "tuned", "1/s", "--burst", "1")
    try:
        results = [
            worker.send(unique("tuned"), {"method": "POST", "path": "/v1/t"}, provider="tuned")
            for _ in range(3)
        ]
        for result in results:
            result.get(timeout=TIMEOUT)
        arrivals = sorted(c.received_at for c in sim.calls(path="/v1/t"))
        assert arrivals[2] - arrivals[0] >= 1.5  # the file's 100/s would have sent them within 30 ms
    finally:
        cli(worker, "limits", "reset", "tuned")


def test_a_forced_open_breaker_holds_operations_until_closed(worker: Worker, sim: ProviderSimulator) -> None:
    cli(worker, "breaker", "open", "fragile")
    try:
        key = unique("held")
        result = worker.send(key, {"method": "POST", "path": "/v1/f"}, provider="fragile")
        deadline = time.monotonic() + TIMEOUT
        # The attempt is claimed, then given back when the breaker says wait.
        while (record := worker.ledger.find("fragile", key)) is None or record.waiting is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shown = json.loads(cli(worker, "ops", "show", key, "--provider", "fragile", "--json"))
        assert (shown["status"], shown["waiting"], shown["attempts"]) == ("queued", "breaker_forced_open", 0)
        breakers = json.loads(cli(worker, "breaker", "show", "fragile", "--json"))
        assert breakers[0]["forced"] == "open"
        assert sim.calls(path="/v1/f") == []
    finally:
        cli(worker, "breaker", "close", "fragile")
    assert result.get(timeout=TIMEOUT)["attempts"] == 1
    assert len(sim.calls(path="/v1/f")) == 1
    assert record.status is OperationStatus.QUEUED


def test_a_batch_goes_in_chunks_and_ends_partial_with_each_items_outcome(
    worker: Worker, hubspot_server: FakeHubSpot
) -> None:
    key = unique("contacts")
    items = [{"properties": {"email": f"{key}-{n}@example.com"}} for n in range(130)]
    items[5] = {"properties": {"email": "not-an-address"}}
    hubspot_server.transient = {f"{key}#120": 1}
    sent = len(hubspot_server.received())

    result = worker.app.send_task(
        "integrations.crm.batch_create_contacts",
        kwargs={"payload": {"items": items}, "idempotency_key": key},
        queue="integrations.crm",
    ).get(timeout=TIMEOUT)

    assert (result["status"], result["attempts"]) == ("partial", 3)  # 100 + 30, then #120 again
    states = {item["key"]: item for item in result["items"]}
    assert states[f"{key}#5"]["error"]["body"]["category"] == "INVALID_EMAIL"
    assert states[f"{key}#120"]["attempts"] == 2 and states[f"{key}#120"]["status"] == "succeeded"
    assert sum(item["status"] == "succeeded" for item in result["items"]) == 129
    calls = hubspot_server.received()[sent:]
    assert [len(call.json()["inputs"]) for call in calls] == [100, 30, 1]
    assert all(hubspot_server.created[f"{key}#{n}"] == 1 for n in range(130) if n != 5)
    record = worker.ledger.find("crm", key)
    assert record is not None and record.status is OperationStatus.PARTIAL
    assert [item.status for item in record.items or ()] == [item["status"] for item in result["items"]]


def test_a_secret_reaches_the_provider_and_nothing_else(
    worker: Worker, sim: ProviderSimulator, hubspot_server: FakeHubSpot
) -> None:
    ok = worker.send(unique("secret"), {"method": "POST", "path": "/v1/s"}, provider="secured")
    assert ok.get(timeout=TIMEOUT)["status"] == "succeeded"
    rejected = worker.send(
        unique("secret"), {"method": "POST", "path": "/v1/s?status=401"}, provider="secured"
    )
    with pytest.raises(Exception, match="provider_rejected"):
        rejected.get(timeout=TIMEOUT)
    assert {c.headers["authorization"] for c in sim.calls(path="/v1/s")} == {f"Bearer {CANARY}"}
    batch = worker.app.send_task(
        "integrations.crm.batch_create_contacts",
        kwargs={"payload": {"items": [{"properties": {"email": "x"}}]}, "idempotency_key": unique("c")},
        queue="integrations.crm",
    )
    assert batch.get(timeout=TIMEOUT)["status"] == "failed"
    assert hubspot_server.received()[-1].header("authorization") == f"Bearer {CANARY}"

    canary = CANARY.encode()
    client = redis.Redis.from_url(worker.env["REDIS_URL"])  # the broker and the result backend
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = list(client.hgetall(key).values())
        elif kind in (b"set", b"zset"):
            values = list(client.smembers(key)) if kind == b"set" else client.zrange(key, 0, -1)
        else:
            values = []
        assert not any(canary in value for value in values), key
    client.close()
    with worker.ledger.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM operations").fetchall()
    assert rows and not any(CANARY in str(row) for row in rows)
    assert CANARY not in worker.process.log.read_text()
