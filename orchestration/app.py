"""The Backstop Celery app: settings, heartbeat boot step and tasks, built from settings."""

from __future__ import annotations

from backstop.orchestration.celery_app import BackstopApp, celery_config, log_expected_as_warnings
from backstop.orchestration.heartbeat import HeartbeatStep
from backstop.orchestration.tasks import register_tasks
from backstop.settings import Settings


def create_app(settings: Settings, broker_url: str) -> BackstopApp:
    app = BackstopApp("backstop", set_as_current=False)
    app.settings = settings
    app.conf.update(celery_config(settings.config, broker_url, settings.sentinel_password))
    app.steps["consumer"].add(HeartbeatStep)
    register_tasks(app)
    log_expected_as_warnings()
    return app
