"""The Celery application. Start a worker for a provider with:

celery -A config.celery_app worker -Q integrations.<provider>
"""

from __future__ import annotations

from celery import Celery

from config.celery_settings import celery_config
from config.settings import get_settings
from tasks import register_tasks

settings = get_settings()
app = Celery("integrations")
app.conf.update(celery_config(settings))
register_tasks(app, settings)
