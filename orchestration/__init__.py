"""Backstop's control plane: the Celery app and its tasks, beat, dispatch, failover and the
watchdog, the run ledger and the catalog in Redis, status, the command line, the supervisor."""
