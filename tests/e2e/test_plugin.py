"""An adapter from another installed package, through the `integrations.adapters` entry points: the
README's worked example, installed by the test suite and run by a real worker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from integrations.ledger import schema
from integrations.testing.provider import ProviderSimulator
from tasks.worker import running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db

EXAMPLE = Path(__file__).resolve().parents[1] / "example_adapter"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed into a folder of its own (not into the project's environment)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def notes_worker(
    installed: Path, redis_server_url: str, simulator: ProviderSimulator, tmp_path: Path
) -> Iterator[Celery]:
    redis_url = with_redis_db(redis_server_url, TEST_REDIS_DB - 1)
    providers = tmp_path / "providers.toml"
    providers.write_text(f'[providers.notes]\nadapter = "notes"\nbase_url = "{simulator.url}"\n')
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        PYTHONPATH=os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")]),
    )
    app = Celery("application", broker=redis_url, backend=redis_url)
    app.backend.client.flushdb()
    with running_worker(app, env, ["integrations.notes"], tmp_path):
        yield app
    app.backend.client.flushdb()
    app.close()


def test_a_plugged_in_adapter_runs_as_the_readme_shows(
    notes_worker: Celery, simulator: ProviderSimulator
) -> None:
    result = notes_worker.send_task(
        "integrations.notes.create_note",
        kwargs={"payload": {"title": "Call the bank", "tags": ["todo"]}, "idempotency_key": "note-1"},
        queue="integrations.notes",
    )
    value = result.get(timeout=30)
    assert value["status"] == "succeeded" and value["response"]["id"].startswith("sim_")
    [call] = simulator.calls(path="/v1/notes")
    assert call.json == {"title": "Call the bank", "body": "", "tags": ["todo"]}
    bad = notes_worker.send_task(
        "integrations.notes.create_note",
        kwargs={"payload": {"title": ""}, "idempotency_key": "note-2"},
        queue="integrations.notes",
    )
    with pytest.raises(Exception, match=r"^invalid_request: notes.create_note: payload.title"):
        bad.get(timeout=30)
