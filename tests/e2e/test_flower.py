"""Flower as operators run it: `integrations flower` against a real worker and the provider simulator.

The payloads carry a canary (a card number the simulator echoes in its answers, so it is in the results
too), and the application's own Celery app sends `task-sent` events, which carry the payload as the sender
wrote it. Flower must be behind its login, show each operation's summary and outcome, and show the canary
nowhere; the worker's JSON log lines must not hold it either.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
import pytest
import requests
from celery import Celery
from celery.result import AsyncResult

from config.flower import tornado_argv
from integrations.ledger import schema
from integrations.testing.provider import ProviderSimulator
from tasks.worker import WorkerProcess, running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db

INTEGRATIONS = str(Path(sys.executable).with_name("integrations"))
CARD = "4000" + "".join(secrets.choice("0123456789") for _ in range(12))  # the canary
PROVIDERS = """
[providers.shop]
adapter = "http"
base_url = "{url}"
timeout = 2.0
[providers.shop.retry]
max_attempts = 3

[providers.slowlane]  # one call an hour: the second operation waits for the throttle
adapter = "http"
base_url = "{url}"
rate_limit = "1/h"
burst = 1
"""
TIMEOUT = 30


@dataclass
class Deployment:
    app: Celery
    worker: WorkerProcess
    flower_url: str
    flower_log: Path
    login: tuple[str, str]

    def get(self, path: str, login: bool = True) -> requests.Response:
        return requests.get(self.flower_url + path, auth=self.login if login else None, timeout=TIMEOUT)

    def task(self, task_id: str) -> dict[str, Any]:
        answer = self.get(f"/api/task/info/{task_id}")
        answer.raise_for_status()
        return dict(answer.json())


def flower_process(env: dict[str, str], folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """`integrations flower` as an operator starts it, its output in ``folder/flower.log``."""
    with (folder / "flower.log").open("ab") as log:
        return subprocess.Popen(
            [INTEGRATIONS, "flower", *args], env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module")
def deployment(
    redis_server_url: str, simulator_server: ProviderSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("flower")
    database = f"sqlite:///{folder / 'ledger.sqlite3'}"
    schema.upgrade(database)
    providers = folder / "providers.toml"
    providers.write_text(PROVIDERS.format(url=simulator_server.url))
    redis_url = with_redis_db(redis_server_url, TEST_REDIS_DB + 2)
    login = ("operator", secrets.token_urlsafe(12))
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        INTEGRATIONS_LOG_FORMAT="json",
        FLOWER_BASIC_AUTH=":".join(login),
        PYTHONUNBUFFERED="1",
    )
    env.pop("BROKER_URL", None)
    # The application's app, as the README shows it, with task-sent events on: they carry its kwargs.
    app = Celery("application", broker=redis_url, backend=redis_url)
    app.conf.update(accept_content=["json"], result_accept_content=["json"], task_send_sent_event=True)
    app.backend.client.flushdb()
    # Task events off (the default): the worker sends them because Flower asks, as a worker run as the
    # README shows (with its heartbeat) does.
    env.pop("INTEGRATIONS_TASK_EVENTS", None)
    with running_worker(
        app, env, ["integrations.shop", "integrations.slowlane"], folder, loglevel="INFO", heartbeat=True
    ) as worker:
        flower = flower_process(env, folder, "--port", "0")  # a free port, as its banner says
        try:
            port = wait_for(lambda: banner_port(folder / "flower.log"), flower, folder)
            yield Deployment(app, worker, f"http://127.0.0.1:{port}", folder / "flower.log", login)
        finally:
            flower.send_signal(signal.SIGTERM)
            flower.wait(timeout=30)
    app.backend.client.flushdb()
    app.close()


def banner_port(log: Path) -> int | None:
    found = re.search(r"Visit me at http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def wait_for(probe: Callable[[], int | None], process: subprocess.Popen[bytes], folder: Path) -> int:
    deadline = time.monotonic() + TIMEOUT
    while (value := probe()) is None:
        log = (folder / "flower.log").read_text(errors="replace")[-3000:]
        assert process.poll() is None, f"Flower exited:\n{log}"
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    return value


def send(
    app: Celery, provider: str, path: str, key: str | None = None, queue: str | None = None, **kwargs: Any
) -> AsyncResult:
    """An operation whose payload holds the canary, in the path and the body (the simulator echoes both)."""
    payload = {"method": "POST", "path": f"/v1/cards/{CARD}{path}", "json": {"card_number": CARD}}
    key = key or f"{provider}-{uuid.uuid4().hex[:10]}"
    return app.send_task(
        f"integrations.{provider}.request",
        kwargs={"payload": payload, "idempotency_key": key, **kwargs},
        queue=queue or f"integrations.{provider}",
    )


def until(deployment: Deployment, task_id: str, ready: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Flower's record of ``task_id`` once ``ready(record)`` holds."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        answer = deployment.get(f"/api/task/info/{task_id}")
        if answer.status_code == 200 and ready(task := answer.json()):
            return dict(task)
        assert time.monotonic() < deadline, (answer.status_code, answer.text, deployment.worker.log_tail())
        time.sleep(0.1)


@dataclass
class Sent:
    key: str
    succeeded: AsyncResult
    rejected: AsyncResult
    failed_once: AsyncResult  # a 503 with Retry-After 600: its second attempt is ten minutes away
    throttled: AsyncResult  # the second operation within the hour on slowlane
    unserved: AsyncResult  # on a queue no worker reads: Flower has only the application's task-sent event

    @property
    def all(self) -> list[AsyncResult]:
        return [self.succeeded, self.rejected, self.failed_once, self.throttled, self.unserved]


@pytest.fixture(scope="module")
def sent(deployment: Deployment) -> Sent:
    # Flower captures events once it has subscribed to them: until it has seen an operation received.
    deadline = time.monotonic() + TIMEOUT
    while True:
        probe = send(deployment.app, "shop", "/probe")
        probe.get(timeout=TIMEOUT)
        seen = deployment.get(f"/api/task/info/{probe.id}")
        if seen.status_code == 200 and seen.json().get("received"):
            break
        assert time.monotonic() < deadline, deployment.flower_log.read_text()[-3000:]
    send(deployment.app, "slowlane", "/charges").get(timeout=TIMEOUT)  # the hour's one call
    key = f"order-{uuid.uuid4().hex[:10]}"
    sent = Sent(
        key=key,
        succeeded=send(deployment.app, "shop", "/charges", key, request_id="req-flower-1"),
        rejected=send(deployment.app, "shop", "/charges?status=422"),
        failed_once=send(deployment.app, "shop", "/charges?fail=1&fail_status=503&retry_after=600"),
        throttled=send(deployment.app, "slowlane", "/charges"),
        unserved=send(deployment.app, "shop", "/charges", queue="integrations.unserved"),
    )
    # Every one has reached its state in Flower before a test reads the pages.
    assert CARD in sent.succeeded.get(timeout=TIMEOUT)["response"]["body"]["path"]
    until(deployment, sent.succeeded.id, lambda t: t["state"] == "SUCCESS")
    until(deployment, sent.rejected.id, lambda t: t["state"] == "FAILURE")
    until(deployment, sent.failed_once.id, lambda t: t["retried"])
    until(deployment, sent.throttled.id, lambda t: t["retried"])
    until(deployment, sent.unserved.id, lambda t: t["sent"])
    return sent


def test_flower_shows_each_operation_by_its_summary_and_outcome(deployment: Deployment, sent: Sent) -> None:
    succeeded = deployment.task(sent.succeeded.id)
    assert succeeded["sent"], "the application's task-sent event, with the payload, reached Flower"
    assert ast.literal_eval(succeeded["kwargs"]) == {
        "provider": "shop",
        "operation": "request",
        "idempotency_key": sent.key,
        "request_id": "req-flower-1",
        "redeliveries": 0,
    }
    assert ast.literal_eval(succeeded["args"]) == ()
    assert ast.literal_eval(succeeded["result"]) == {
        "outcome": "succeeded",
        "provider": "shop",
        "operation": "request",
        "idempotency_key": sent.key,
        "request_id": "req-flower-1",
        "redeliveries": 0,
    }
    # Flower's search finds an operation by its key.
    found = deployment.get("/api/tasks?" + urlencode({"search": f"kwargs:idempotency_key={sent.key}"})).json()
    assert list(found) == [sent.succeeded.id]

    rejected = deployment.task(sent.rejected.id)
    assert (rejected["exception"], rejected["traceback"]) == ("OperationFailed('provider_rejected')", "")

    # A retry after a failed attempt and a wait for the throttle are told apart, in Flower and in the
    # result backend (the task's RETRY state), by the reason's type and value.
    failed_once, throttled = deployment.task(sent.failed_once.id), deployment.task(sent.throttled.id)
    assert failed_once["exception"] == "AttemptFailed('provider_unavailable')"
    assert throttled["exception"] == "Deferred('throttled')"
    unserved = deployment.task(sent.unserved.id)  # the sender's kwargsrepr (the payload) is not kept
    assert (unserved["state"], unserved.get("kwargs")) == ("PENDING", None)
    for result, kind, reason in [
        (sent.failed_once, "AttemptFailed", "provider_unavailable"),
        (sent.throttled, "Deferred", "throttled"),
    ]:
        assert result.state == "RETRY"
        assert (type(result.result).__name__, result.result.args) == (kind, (reason,))


def pages(deployment: Deployment, sent: Sent) -> list[str]:
    node = deployment.worker.node
    datatable = urlencode(
        {
            "draw": 1,
            "start": 0,
            "length": 100,
            "search[value]": "",
            "order[0][column]": 0,
            "columns[0][data]": "name",
            "order[0][dir]": "asc",
        }
    )
    each = [f"/task/{r.id}" for r in sent.all] + [f"/api/task/info/{r.id}" for r in sent.all]
    return ["/", "/tasks", f"/tasks/datatable?{datatable}", f"/worker/{node}", "/api/tasks", *each]


def test_flower_asks_for_its_login(deployment: Deployment, sent: Sent) -> None:
    for page in pages(deployment, sent):
        answer = deployment.get(page, login=False)
        assert answer.status_code == 401, page
        assert CARD not in answer.text


def test_the_payload_and_the_answer_are_nowhere_in_flower_or_the_worker_log(
    deployment: Deployment, sent: Sent
) -> None:
    # The worker holds the two operations put back with a countdown: inspect shows them by their summary.
    node = deployment.worker.node
    inspected = deployment.get(f"/api/workers?refresh=1&workername={node}")
    scheduled = {entry["request"]["id"]: entry["request"] for entry in inspected.json()[node]["scheduled"]}
    assert scheduled.keys() >= {sent.failed_once.id, sent.throttled.id}
    assert ast.literal_eval(scheduled[sent.throttled.id]["kwargs"])["provider"] == "slowlane"
    for page in [*pages(deployment, sent), "/metrics"]:
        answer = deployment.get(page)
        assert answer.status_code == 200, (page, answer.text[:500])
        assert CARD not in answer.text, page
    assert CARD not in inspected.text
    for result in sent.all:  # these would read the result, the provider's answer, from the backend
        for endpoint in ("/api/task/result/", "/api/task/apply/"):
            answer = deployment.get(endpoint + result.id)
            assert answer.status_code == 403 and CARD not in answer.text
    assert CARD not in deployment.flower_log.read_text()
    assert CARD not in deployment.worker.log.read_text()


def worker_log_lines(deployment: Deployment) -> list[dict[str, Any]]:
    """The worker's log from its first JSON line on (before it: the banner Celery prints at start)."""
    text = deployment.worker.log.read_text()
    lines = text[text.index("\n{") + 1 :].splitlines()
    return [json.loads(line) for line in lines if line]


def test_the_worker_writes_one_json_object_per_line(deployment: Deployment, sent: Sent) -> None:
    lines = worker_log_lines(deployment)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    [done] = [
        line for line in lines if sent.succeeded.id in line["message"] and "succeeded in" in line["message"]
    ]
    assert done["logger"] == "celery.app.trace"
    assert {
        key: done[key]
        for key in ("provider", "operation", "idempotency_key", "request_id", "attempt", "outcome")
    } == {
        "provider": "shop",
        "operation": "request",
        "idempotency_key": sent.key,
        "request_id": "req-flower-1",
        "attempt": 1,
        "outcome": "succeeded",
    }
    assert done["duration_ms"] > 0
    [retry] = [line for line in lines if sent.throttled.id in line["message"] and "retry" in line["message"]]
    assert retry["message"].endswith("retry: Deferred('throttled')")


def test_the_cores_log_lines_carry_the_attempts_fields(deployment: Deployment, sent: Sent) -> None:
    fields = {"request_id", "idempotency_key", "provider", "operation", "attempt", "outcome", "duration_ms"}
    core = [
        line
        for line in worker_log_lines(deployment)
        if line["logger"].startswith("integrations") and line.get("idempotency_key") == sent.key
    ]
    assert core and all(fields <= line.keys() for line in core), core


@pytest.mark.parametrize(
    ("login", "told"),
    [
        ({}, ["FLOWER_BASIC_AUTH=user:password", "FLOWER_AUTH", "FLOWER_OAUTH2_KEY"]),
        ({"FLOWER_BASIC_AUTH": "operator"}, ["not of the form user:password"]),
    ],
)
def test_flower_refuses_to_start_without_a_login(
    login: dict[str, str], told: list[str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")} | login
    flower = flower_process(env, tmp_path, "--port", "0")
    assert flower.wait(timeout=TIMEOUT) == 1
    said = (tmp_path / "flower.log").read_text()
    assert said.startswith("Error: Flower not started: ") and all(part in said for part in told), said


def test_flower_options_are_passed_as_tornado_takes_them() -> None:
    argv = ["--max-tasks", "100", "--persistent", "--db=flower.db", "--", "--basic_auth", "a:b"]
    assert tornado_argv(5599, "0.0.0.0", argv) == [
        "--port=5599",
        "--address=0.0.0.0",
        "--max-tasks=100",
        "--persistent",
        "--db=flower.db",
        "--basic_auth=a:b",
    ]
    with pytest.raises(click.UsageError, match="'--bogus=1' is not one of Flower's options"):
        tornado_argv(None, None, ["--bogus=1"])
