"""The watchdog: one pass over what a dead process may have left behind.

It ends runs whose RDS nobody serves, sends again runs whose process died, settles
occurrences left open and puts back messages held by a worker that died. The leading beat
runs a pass every ``WATCHDOG_INTERVAL_S`` in its own process (the leader lease makes it one
pass at a time fleet-wide), so no task message per pass floods Flower's task list; each
pass is counted in the broker and shown by ``backstop metrics``
(``backstop_watchdog_passes_total``, ``backstop_watchdog_last_pass_timestamp_seconds``).
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery

from backstop.constants import METRICS_WATCHDOG_KEY
from backstop.orchestration.control import Control
from backstop.orchestration.redeliver import redeliver_stale

log = logging.getLogger(__name__)

# Fields of METRICS_WATCHDOG_KEY.
PASSES = "passes"
ACTIONS = "actions"
LAST_PASS = "last_pass"


def watchdog_pass(app: Celery, control: Control, client: redis.Redis) -> int:
    """One pass; returns how many runs, occurrences and messages it acted on. A broker that
    does not answer ends the pass early: the next one, 10 s later, tries again."""
    acted = control.watchdog() + redeliver_stale(app)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(METRICS_WATCHDOG_KEY, PASSES, 1)
    pipe.hincrby(METRICS_WATCHDOG_KEY, ACTIONS, acted)
    pipe.hset(METRICS_WATCHDOG_KEY, LAST_PASS, repr(time.time()))
    pipe.execute()
    if acted:
        log.info("watchdog: acted on %d run(s), occurrence(s) or message(s)", acted)
    return acted


def watchdog_counts(client: redis.Redis) -> dict[str, float]:
    """Passes, actions and the last pass's Unix time (0 before the first pass)."""
    raw = client.hgetall(METRICS_WATCHDOG_KEY)
    found = {k.decode(): float(v) for k, v in raw.items()}
    return {name: found.get(name, 0.0) for name in (PASSES, ACTIONS, LAST_PASS)}
