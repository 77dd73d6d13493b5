"""Several `integrations db upgrade` started together, as containers of one rollout run them: all succeed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine, database_url

UPGRADERS = 6


def libpq_url(url: str) -> str:
    return database_url(url).replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the test's own: a new SQLite file, or a new PostgreSQL database dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        return
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TEST_POSTGRES_URL is not set: PostgreSQL tests skipped")
    name = f"integrations_upgrade_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(base), autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(database_url(base)).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_url(base), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_upgraders(url: str, count: int) -> list[subprocess.Popen[str]]:
    command = [str(Path(sys.executable).with_name("integrations")), "db", "upgrade"]
    environment = os.environ | {"DATABASE_URL": url}
    return [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]


def finish(processes: list[subprocess.Popen[str]]) -> list[subprocess.CompletedProcess[str]]:
    finished = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=60)
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return finished


@contextmanager
def creation_held_back(url: str) -> Iterator[None]:
    """Make every CREATE in the PostgreSQL database wait until exit: an uncommitted DROP SCHEMA public
    holds the schema's lock, which creating a table in it needs, and is rolled back at exit."""
    with psycopg.connect(libpq_url(url)) as holder:
        holder.execute("DROP SCHEMA public")
        yield
        holder.rollback()


def wait_until_all_wait_on_locks(url: str, processes: list[subprocess.Popen[str]]) -> None:
    """Until each upgrader waits on a lock in the database (or one has exited: the test reports why)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(libpq_url(url), autocommit=True) as observer:
        while all(process.poll() is None for process in processes):
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            waiting = row[0] if row else 0
            if waiting == len(processes):
                return
            assert time.monotonic() < deadline, f"{waiting} of {len(processes)} upgraders wait on a lock"
            time.sleep(0.05)  # polling a condition: pg_stat_activity offers no way to wait for a change


def upgrade_at_once(url: str, count: int) -> list[subprocess.CompletedProcess[str]]:
    """Run `integrations db upgrade` in `count` processes at once; wait for all of them."""
    if make_url(url).get_backend_name() != "postgresql":
        # Each process spends about a second importing before its first statement, and they share the
        # CPUs evenly, so started in a quick loop they reach the database within moments of each other.
        return finish(start_upgraders(url, count))
    # On PostgreSQL they are lined up exactly: all reach their first CREATE (or the upgrade lock, which
    # the first of them then holds) before any may create anything; then they are let go together.
    with creation_held_back(url):
        processes = start_upgraders(url, count)
        try:
            wait_until_all_wait_on_locks(url, processes)
        except BaseException:
            for process in processes:
                process.kill()
                process.wait()
            raise
    return finish(processes)


def test_upgrades_started_together_all_succeed_and_leave_the_schema_at_head(fresh_database_url: str) -> None:
    head = schema.head_revision()
    results = upgrade_at_once(fresh_database_url, UPGRADERS)
    failures = [
        f"exit {result.returncode}: {result.stderr[-2000:]}" for result in results if result.returncode
    ]
    assert not failures, "\n\n".join(failures)
    for result in results:
        assert result.stdout.strip() == f"ledger schema at revision {head}"
    engine = create_ledger_engine(fresh_database_url)
    try:
        assert schema.current_revision(engine) == head
    finally:
        engine.dispose()
