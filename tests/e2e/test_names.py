"""Wrong names fail loudly: a worker refuses a queue no provider serves, and `integrations queues` shows
what waits in the broker where no worker of a provider looks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from integrations.ledger import schema
from tasks.worker import running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db

PROVIDERS = """
[providers.acme]
adapter = "http"
base_url = "https://api.acme.example"

[providers.mail]
adapter = "sendgrid"
base_url = "https://api.sendgrid.example"
"""


@dataclass(frozen=True)
class Site:
    """A providers file with two providers, a migrated ledger, and a Redis database of their own."""

    env: dict[str, str]
    providers: Path
    folder: Path
    app: Celery  # a plain client, as an application has


@pytest.fixture
def site(redis_server_url: str, tmp_path: Path) -> Iterator[Site]:
    redis_url = with_redis_db(redis_server_url, TEST_REDIS_DB - 1)
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS)
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        PYTHONUNBUFFERED="1",
    )
    env.pop("BROKER_URL", None)
    app = Celery("application", broker=redis_url, backend=redis_url)
    app.conf.update(broker_connection_retry_on_startup=True)
    app.backend.client.flushdb()
    yield Site(env, providers, tmp_path, app)
    app.backend.client.flushdb()
    app.close()


def test_a_worker_asked_for_a_queue_no_provider_serves_refuses_to_start(site: Site) -> None:
    log = site.folder / "worker.log"
    queues = "integrations.acme,integrations.acmee,payments"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config.celery_app", "worker", "-Q", queues, "-c", "1"],
            env=site.env,
            cwd=site.folder,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    said = log.read_text()
    assert returncode != 0, said
    assert "ready." not in said
    assert f"integrations.acmee: no provider in {site.providers} serves it" in said
    assert "payments: not a queue of this project" in said
    assert "acme (integrations.acme), mail (integrations.mail)" in said
    assert "integrations.acme:" not in said  # the served queue is not among the refused


def test_a_worker_may_consume_the_projects_own_queues_and_celerys_default(site: Site) -> None:
    queues = ["integrations.acme", "integrations.maintenance", "integrations.default", "celery"]
    with running_worker(site.app, site.env, queues, site.folder, concurrency=1) as worker:
        assert worker.process.poll() is None


def queues(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("integrations")
    return subprocess.run(
        [str(binary), "queues", *args], env=site.env, capture_output=True, text=True, timeout=60
    )


def test_queues_shows_each_depth_and_flags_what_no_provider_serves(site: Site) -> None:
    for priority in (None, 6, 9):  # kombu keeps each priority step in a list of its own
        site.app.send_task(
            "integrations.acme.request", kwargs={}, queue="integrations.acme", priority=priority
        )
    for _ in range(2):  # a provider removed from the providers file while its messages wait
        site.app.send_task("integrations.acmee.request", kwargs={}, queue="integrations.acmee")
    site.app.send_task("integrations.mail.send_mail", kwargs={})  # no queue=: Celery's default queue
    client = redis.Redis.from_url(site.env["REDIS_URL"])
    assert client.llen("integrations.acme") == 1 and client.llen("integrations.acme\x06\x166") == 1
    client.close()

    done = queues(site, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["complete"] is True
    rows = {row["queue"]: row for row in shown["queues"]}
    assert {name: row["messages"] for name, row in rows.items()} == {
        "celery": 1,
        "integrations.acme": 3,
        "integrations.acmee": 2,
        "integrations.default": 0,
        "integrations.mail": 0,
        "integrations.maintenance": 0,
    }
    assert (rows["integrations.acme"]["provider"], rows["integrations.acme"]["flag"]) == ("acme", None)
    assert (rows["integrations.acmee"]["kind"], rows["integrations.acmee"]["flag"]) == (
        "unserved",
        "no provider serves it",
    )
    assert rows["celery"]["flag"] == "sent without queue="
    assert [name for name, row in rows.items() if row["flag"]] == ["celery", "integrations.acmee"]

    human = queues(site)
    assert human.returncode == 0, human.stderr
    lines = {line.split()[1]: line for line in human.stdout.splitlines() if line.startswith("│")}
    assert "3" in lines["integrations.acme"].split("│")[2]
    assert "no provider serves it" in lines["integrations.acmee"]
    assert "sent without queue=" in lines["celery"]
    assert f"integrations.acmee: no provider in {site.providers} serves it" in human.stdout
    assert "celery -A config.celery_app purge -Q integrations.acmee" in human.stdout


def test_an_empty_celery_queue_is_not_flagged(site: Site) -> None:
    done = queues(site, "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["queue"]: row for row in json.loads(done.stdout)["queues"]}
    assert rows["celery"]["messages"] == 0 and rows["celery"]["flag"] is None
    assert not any(row["flag"] for row in rows.values())
