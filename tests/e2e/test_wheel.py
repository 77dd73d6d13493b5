"""The project as ``pip install .`` gives it to a user: a wheel holding every file the code reads at run
time, installed into a virtual environment of its own, running a real worker away from this checkout.

Every other test runs on the editable install, which reads package files straight from the checkout, so a
file left out of ``[tool.setuptools.package-data]`` shows only here.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery

from integrations import keys
from integrations.testing.provider import ProviderSimulator
from tasks.worker import running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("integrations", "config", "tasks")
TIMEOUT = 30
PIP = (sys.executable, "-m", "pip")
OFFLINE = ("--quiet", "--no-deps", "--no-index")

# Run by the installed environment's interpreter: where the project's packages come from, and whether the
# checkout's editable-install finder got in.
PROBE = """
import json, sys
import config, integrations, tasks
print(json.dumps({
    "modules": [module.__file__ for module in (integrations, config, tasks)],
    "editable": [name for name in sys.modules if name.startswith("__editable__")]
    + [entry for entry in sys.path if "__editable__" in entry],
}))
"""


def run(command: list[str | Path], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run ``command`` and return its output; a failure shows the command and everything it printed."""
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )
    shown = " ".join(str(part) for part in command)
    assert done.returncode == 0, f"{shown} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def package_files(root: Path) -> set[str]:
    """Every file inside the project's packages under ``root``, as a wheel names it."""
    return {
        path.relative_to(root).as_posix()
        for package in PACKAGES
        for path in (root / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@dataclass(frozen=True)
class Environment:
    """A virtual environment outside the checkout with the wheel installed in it."""

    root: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / "bin" / name

    def env(self, **settings: str) -> dict[str, str]:
        """A user's process environment in this venv: none of the test run's PYTHONPATH or project settings."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in {"PYTHONPATH", "PYTHONHOME", "BROKER_URL", "REDIS_URL", "DATABASE_URL"}
            and not name.startswith("INTEGRATIONS_")
        }
        path = os.pathsep.join([str(self.root / "bin"), env.get("PATH", "")])
        return {**env, "VIRTUAL_ENV": str(self.root), "PATH": path, "PYTHONUNBUFFERED": "1", **settings}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the checkout's sources. Built in place, setuptools would write
    build/ and *.egg-info into the checkout, and ship whatever stale files an earlier build left there."""
    source = tmp_path_factory.mktemp("source")
    for path in ROOT.iterdir():
        if path.is_file():  # pyproject.toml, the readme and whatever else the build names
            shutil.copy2(path, source)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    run([*PIP, "wheel", *OFFLINE, "--no-build-isolation", "--wheel-dir", out, source])
    [built] = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def environment(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Environment:
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root])
    python = root / "bin" / "python"
    # `pip --python` runs this pip on the new interpreter, so it installs as the venv's own pip would: into
    # its site-packages, the `integrations` command with its interpreter on the first line.
    run([*PIP, "--python", python, "install", *OFFLINE, wheel])
    site_packages = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    )
    # The dependencies come from the test environment, after the venv's own site-packages on sys.path. A .pth
    # line only adds its folder: the .pth files in that folder are not run, among them the one that installs
    # the editable finder pointing at this checkout (test_the_installed_project_is_imported_from_its_venv).
    (site_packages / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return Environment(root, site_packages)


def test_the_wheel_holds_every_file_of_the_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    missing = sorted(package_files(ROOT) - shipped)
    assert not missing, f"{wheel.name} lacks {missing}: list them in [tool.setuptools.package-data]"


def test_the_installed_project_is_imported_from_its_venv(environment: Environment, tmp_path: Path) -> None:
    assert not environment.root.is_relative_to(ROOT) and not tmp_path.is_relative_to(ROOT)
    found = json.loads(run([environment.python, "-c", PROBE], env=environment.env(), cwd=tmp_path))
    elsewhere = [
        file for file in found["modules"] if not Path(file).is_relative_to(environment.site_packages)
    ]
    assert elsewhere == [], found
    assert found["editable"] == []
    command = environment.script("integrations").read_text().splitlines()[:3]
    assert any(str(environment.python) in line for line in command), command


@pytest.fixture
def application(redis_server_url: str) -> Iterator[Celery]:
    """A plain Celery client, on a Redis database of its own that it empties before and after."""
    url = with_redis_db(redis_server_url, TEST_REDIS_DB - 1)
    app = Celery("application", broker=url, backend=url)
    app.backend.client.flushdb()
    yield app
    app.backend.client.flushdb()
    app.close()


def test_a_worker_installed_from_the_wheel_runs_an_operation(
    environment: Environment, application: Celery, simulator: ProviderSimulator, tmp_path: Path
) -> None:
    providers = tmp_path / "providers.toml"
    # A rate limit and a breaker: both guards run their Lua scripts, read from the installed package.
    providers.write_text(
        f'[providers.packaged]\nadapter = "http"\nbase_url = "{simulator.url}"\nrate_limit = "50/s"\n'
        "[providers.packaged.breaker]\nfail_max = 5\n"
    )
    env = environment.env(
        REDIS_URL=application.conf.broker_url,
        DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
    )
    run([environment.script("integrations"), "db", "upgrade"], env=env, cwd=tmp_path)
    python = str(environment.python)
    with running_worker(application, env, ["integrations.packaged"], tmp_path, python=python) as worker:
        result = application.send_task(
            "integrations.packaged.request",
            kwargs={"payload": {"method": "POST", "path": "/v1/payments"}, "idempotency_key": "wheel-1"},
            queue="integrations.packaged",
        )
        value = result.get(timeout=TIMEOUT, propagate=False)
        assert result.state == "SUCCESS", f"{value!r}\n{worker.log_tail()}"
    assert value["status"] == "succeeded"
    assert len(simulator.calls(idempotency_key="wheel-1")) == 1
    shared = application.backend.client
    assert shared.hget(keys.breaker("packaged"), "successes") == b"1"
    assert shared.exists(keys.bucket("packaged")) == 1
