"""The fleet's Celery app for Celery's own command line:

    BACKSTOP_CONFIG=backstop.yaml celery -A backstop.orchestration.celery_main inspect active

The config is read as every ``backstop`` command reads it (``$BACKSTOP_CONFIG``, else
``./backstop.yaml``), and the broker is the configured one or that of a running
``backstop up``.
"""

from __future__ import annotations

import os

from backstop.orchestration.app import create_app
from backstop.orchestration.broker import broker_url
from backstop.settings import load_settings

_settings = load_settings(None, os.environ)
app = create_app(_settings, broker_url(_settings))
