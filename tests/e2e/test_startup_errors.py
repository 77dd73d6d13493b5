"""A worker that cannot start says why once, naming the file, the provider and the key and what to do, with
no traceback, and exits with a non-zero status: a worker started as an operator starts one."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from integrations.ledger import schema
from tests.conftest import TEST_REDIS_DB, with_redis_db

GOOD = """
[providers.acme]
adapter = "http"
base_url = "https://api.acme.example"
"""
LITERAL_SECRET = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"  # a secret written where its reference belongs


@dataclass(frozen=True)
class Case:
    providers: str  # the providers file
    said: list[str]  # the start of each line the worker must print, once each, in this order
    migrated: bool = True


CASES = {
    "not TOML": Case("[providers.acme\nadapter = 'http'\n", ["{file}: not valid TOML: Expected ']'"]),
    "unknown key and wrong type": Case(
        GOOD + 'rate_limt = "20/s"\ntimeout = "fast"\n',
        [
            "{file}: [providers.acme] key 'timeout': Input should be a valid number",
            "{file}: [providers.acme] key 'rate_limt': unknown key (check its spelling",
        ],
    ),
    "unknown adapter": Case(
        GOOD.replace('"http"', '"htttp"'),
        ["{file}: [providers.acme] key 'adapter': unknown adapter 'htttp' (known: http, "],
    ),
    "literal secret": Case(
        GOOD + f'[providers.acme.auth]\ntype = "bearer"\nsecret = "{LITERAL_SECRET}"\n',
        [
            "{file}: [providers.acme] key 'auth.secret': must reference the secret, not contain it: write 'env:"
        ],
    ),
    "missing secret": Case(
        GOOD + '[providers.acme.auth]\ntype = "bearer"\nsecret = "env:ACME_KEY_NOT_SET"\n',
        [
            "{file}: [providers.acme.auth] key 'secret': environment variable ACME_KEY_NOT_SET is not set "
            "where this runs; set it, or change the reference"
        ],
    ),
    "unmigrated ledger": Case(
        GOOD,
        ["ledger at sqlite:///{folder}/ledger.sqlite3 has no schema yet: run `integrations db upgrade`"],
        migrated=False,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_worker_that_cannot_start_says_why_once(case: Case, redis_server_url: str, tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(case.providers)
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    if case.migrated:
        schema.upgrade(database)
    env = dict(
        os.environ,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        DATABASE_URL=database,
        REDIS_URL=with_redis_db(redis_server_url, TEST_REDIS_DB - 1),
    )
    for name in ("BROKER_URL", "ACME_KEY_NOT_SET"):
        env.pop(name, None)
    command = ["celery", "-A", "config.celery_app", "worker", "-Q", "integrations.acme", "-c", "1"]

    # From a folder outside the checkout, as an operator runs it (see the README).
    done = subprocess.run(
        [sys.executable, "-m", *command],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and "ready." not in output, output
    ours = [line for line in output.splitlines() if line.startswith((str(providers), "ledger at"))]
    expected = [start.format(file=providers, folder=tmp_path) for start in case.said]
    assert len(ours) == len(expected), output
    for line, start in zip(ours, expected, strict=True):
        assert line.startswith(start), output
    assert LITERAL_SECRET not in output


def test_the_providers_command_names_the_key_of_a_literal_secret_and_not_the_secret(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(CASES["literal secret"].providers)
    env = dict(os.environ, INTEGRATIONS_PROVIDERS_FILE=str(providers))
    binary = Path(sys.executable).with_name("integrations")

    done = subprocess.run(
        [str(binary), "providers"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output
    assert output.count(f"{providers}: [providers.acme] key 'auth.secret': must reference the secret") == 1
    assert LITERAL_SECRET not in output
