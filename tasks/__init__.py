"""Celery tasks: the only place where Celery meets the integrations core."""

from tasks.registry import register_tasks

__all__ = ["register_tasks"]
