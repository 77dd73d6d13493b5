"""Deployment configuration: settings from the environment, the Celery app, the providers file."""
