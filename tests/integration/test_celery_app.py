"""The Celery application as configured: the settings the issue of reliability rests on, and the tasks."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init

from config.celery_settings import VISIBILITY_TIMEOUT, celery_config
from config.settings import Settings
from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation
from integrations.ledger.store import Ledger
from integrations.providers import MAX_COUNTDOWN
from tasks import register_tasks
from tasks.maintenance import PRUNE_TASK
from tests.clock import Clock


def app_for(providers: Path) -> Celery:
    settings = Settings(INTEGRATIONS_PROVIDERS_FILE=providers, REDIS_URL="redis://127.0.0.1:6379/13")
    app = Celery("test")
    app.conf.update(celery_config(settings))
    register_tasks(app, settings)
    return app


def test_reliability_settings_of_the_application_workers_run() -> None:
    from config.celery_app import app  # what `celery -A config.celery_app worker` loads

    conf = app.conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # Task events are sent when Flower asks for them, not at every delivery while nobody watches.
    assert conf.worker_send_task_events is False and conf.task_send_sent_event is False
    # the longest countdown plus the longest attempt (timeout is capped at 300 s; lease = 3 x timeout + 5)
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility == VISIBILITY_TIMEOUT > MAX_COUNTDOWN + 3 * 300 + 5
    task = app.tasks["integrations.acme.request"]  # from the shipped config/providers.toml
    assert task.acks_late is True and task.acks_on_timeout is False
    lease = 3 * 10.0 + 5  # acme's timeout is 10 s
    assert task.soft_time_limit is None and task.time_limit < lease  # the attempt has its own deadline


def test_task_events_from_the_start_when_asked() -> None:
    config = celery_config(Settings(INTEGRATIONS_TASK_EVENTS="true"))
    assert config["worker_send_task_events"] is True and config["task_send_sent_event"] is True


def test_broker_defaults_to_redis_url_and_can_be_another() -> None:
    assert celery_config(Settings(REDIS_URL="redis://r:6379/2"))["broker_url"] == "redis://r:6379/2"
    other = Settings(REDIS_URL="redis://r:6379/2", BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    assert celery_config(other)["broker_url"].startswith("amqp://")
    assert celery_config(other)["result_backend"] == "redis://r:6379/2"


def test_a_task_per_provider_operation_routed_to_its_queue(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(
        '[providers.pay-eu]\nadapter = "http"\nbase_url = "https://a.example"\n'
        '[providers.mail]\nadapter = "http"\nbase_url = "https://b.example"\n'
    )
    app = app_for(providers)
    assert {"integrations.pay-eu.request", "integrations.mail.request"} <= set(app.tasks)
    assert app.conf.task_routes["integrations.pay-eu.request"] == {"queue": "integrations.pay-eu"}
    assert app.conf.task_routes["integrations.mail.request"] == {"queue": "integrations.mail"}
    assert app.tasks["integrations.mail.request"].acks_late is True


def test_worker_signal_handlers_connect_once_however_often_tasks_are_registered(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers.mail]\nadapter = "http"\nbase_url = "https://b.example"\n')
    for _ in range(3):
        app_for(providers)
    for signal in (worker_init, after_setup_logger, after_setup_task_logger):
        ours = [r for r in signal._live_receivers(None) if getattr(r, "__module__", "") == "tasks.registry"]
        assert len(ours) == 1, f"{signal.name}: {ours}"


CORE = Path(__file__).resolve().parents[2] / "integrations"
# What the core must never import: Celery and its transport, and the layers built on top of the core.
OUTWARD = {"celery", "kombu", "config", "tasks"}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an import statement in ``path`` names (at any depth), with its line, relative
    imports resolved against the file's package."""
    package = list(path.relative_to(CORE.parent).parts[:-1])  # a module's, or an __init__.py's own
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield from (
                (node.lineno, f"{module}.{alias.name}" if module else alias.name) for alias in node.names
            )


def test_the_core_imports_nothing_of_celery_config_or_tasks() -> None:
    files = sorted(CORE.rglob("*.py"))
    found = [(path, line, module) for path in files for line, module in imported_modules(path)]
    assert (
        CORE / "cli" / "__init__.py" in files and len(found) > 100
    )  # the walk reads the core, not an empty folder
    outward = [
        f"{path.relative_to(CORE.parent)}:{line}: imports {module}"
        for path, line, module in found
        if module.split(".")[0] in OUTWARD
    ]
    assert outward == [], "the core points outward:\n" + "\n".join(outward)


def test_importing_the_core_loads_no_celery() -> None:
    """Nor through a library it imports: every core module is imported in a fresh interpreter."""
    modules = [
        ".".join(path.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted(CORE.rglob("*.py"))
        if "migrations" not in path.parts
    ]
    code = f"import sys; [__import__(m) for m in {modules!r}]; print(sorted({{'celery', 'kombu'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_maintenance_task_prunes_the_ledger_past_retention(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    old = Ledger.connect(database, clock=Clock(datetime.now(UTC) - timedelta(days=8)))
    fresh = Ledger.connect(database)
    for ledger, key in ((old, "old"), (fresh, "fresh")):
        record = ledger.start(NewOperation("acme", "request", key, key, {}, key), lease=timedelta(seconds=30))
        assert record is not None and ledger.finish(record, OperationStatus.SUCCEEDED, response={})
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers.acme]\nadapter = "http"\nbase_url = "https://a.example"\n')
    settings = Settings(INTEGRATIONS_PROVIDERS_FILE=providers, DATABASE_URL=database)
    app = Celery("test")
    app.conf.update(celery_config(settings))
    register_tasks(app, settings)
    assert app.conf.beat_schedule["prune-ledger"]["task"] == PRUNE_TASK
    assert app.tasks[PRUNE_TASK]() == 1
    assert fresh.find("acme", "old") is None and fresh.find("acme", "fresh") is not None
