"""`make demo` as a user runs it (smaller workload), and the private Redis it falls back on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from integrations.testing.redis_server import redis_answers, redis_for
from tests.conftest import TEST_REDIS_DB, with_redis_db


def test_demo_runs_a_mixed_workload_and_ends_as_expected(redis_server_url: str, tmp_path: Path) -> None:
    demo_url = with_redis_db(redis_server_url, TEST_REDIS_DB + 2)
    demo_db = redis.Redis.from_url(demo_url)
    demo_db.flushdb()
    env = dict(os.environ, REDIS_URL=demo_url, COLUMNS="200")
    cli = Path(sys.executable).with_name("integrations")
    done = subprocess.run(
        [str(cli), "demo", "--operations", "60"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Outcomes by kind of message" in done.stdout and "Ledger by provider" in done.stdout
    assert "keys the provider accepted more than once: 0" in done.stdout
    assert "not as expected" not in done.stdout
    assert (tmp_path / "demo.sqlite3").exists()  # left for `integrations dlq list`
    # the demo's worker (the only one consuming its demo-* queues) is gone
    leftovers = subprocess.run(
        ["pgrep", "-f", "config.celery_app worker -Q integrations.demo-"], capture_output=True, text=True
    )
    assert leftovers.returncode == 1 and leftovers.stdout == ""
    # REDIS_URL named the demo's Redis: the result of each of its 60 operations is in that database
    assert len(demo_db.keys("celery-task-meta-*")) == 60
    demo_db.flushdb()
    demo_db.close()


def test_a_private_redis_is_started_when_none_answers_and_stopped_after() -> None:
    with redis_for("redis://127.0.0.1:1/0") as (url, private):
        assert private and redis_answers(url)
    assert not redis_answers(url)


def test_an_answering_redis_is_used_as_it_is(redis_server_url: str) -> None:
    with redis_for(redis_server_url) as (url, private):
        assert (url, private) == (redis_server_url, False)


def test_redis_url_from_the_environment(redis_server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A database the default URL (database 0) does not name: were REDIS_URL ignored, the default would answer.
    named = with_redis_db(redis_server_url, TEST_REDIS_DB + 1)
    monkeypatch.setenv("REDIS_URL", named)
    with redis_for() as (url, private):
        assert (url, private) == (named, False)
