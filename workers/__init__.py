"""Backstop's data plane: engine, stores, archive, manifest, media, restore, level and
retention policy. It knows nothing of Celery, the broker or the run ledger."""
