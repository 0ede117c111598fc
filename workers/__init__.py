"""Backstop's data plane: the Celery app, worker boot steps, the embedded broker."""
