"""The Celery application. Start a worker for a provider with:

celery -A config.celery_app worker -Q integrations.<provider>
"""

from __future__ import annotations

import click
from celery import Celery
from pydantic import ValidationError

from config.celery_settings import celery_config
from config.settings import get_settings
from integrations.errors import ConfigError
from tasks import register_tasks


def _loaded_by_celery_command() -> bool:
    """Whether the ``celery`` command is loading this module (``-A config.celery_app``), rather than a
    program importing it."""
    context = click.get_current_context(silent=True)
    return context is not None and context.find_root().command.name == "celery"


def _what_to_fix(exc: ConfigError | ValidationError) -> str:
    if isinstance(exc, ConfigError):
        return str(exc)
    # A setting's value is left out: DATABASE_URL and REDIS_URL may hold a password.
    return "\n".join(
        f"environment variable {'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors()
    )


try:
    settings = get_settings()
    app = Celery("integrations")
    app.conf.update(celery_config(settings))
    register_tasks(app, settings)
except (ConfigError, ValidationError) as exc:
    if not _loaded_by_celery_command():
        raise
    # The celery command prints a traceback around any exception its app module raises; SystemExit is
    # the one it lets through, and Python prints its message once on stderr and exits with status 1.
    raise SystemExit(_what_to_fix(exc)) from None
