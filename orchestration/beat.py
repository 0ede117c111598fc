"""The beat scheduler: Celery beat, with one active scheduler among any number of processes.

Every ``backstop beat`` process runs this scheduler. Only the holder of the leader lease
(:mod:`orchestration.leader`) sends anything; the others poll for the lease every
``BEAT_STANDBY_POLL_S`` seconds and take over within ``BEAT_LOCK_TTL_S`` + that poll after
the leader dies (well inside the 60 s of SPEC section 5).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import redis
from celery.beat import Scheduler

from orchestration.leader import LeaderLease
from workers.constants import BEAT_LEADER_KEY, BEAT_LOCK_TTL_S, BEAT_STANDBY_POLL_S

log = logging.getLogger(__name__)

# The leader ticks at least this often, so its lease is renewed long before it runs out.
LEADER_MAX_INTERVAL_S = BEAT_LOCK_TTL_S / 6


def beat_name() -> str:
    return f"beat.{os.getpid()}@{socket.gethostname()}"


class LeaderScheduler(Scheduler):
    """A Celery beat scheduler that schedules only while it holds the leader lease."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.client = redis.Redis.from_url(app.conf.broker_url, socket_timeout=5,
                                           socket_connect_timeout=5)
        self.lease = LeaderLease(self.client, BEAT_LEADER_KEY, beat_name(), BEAT_LOCK_TTL_S)
        self.leading = False
        kwargs["max_interval"] = LEADER_MAX_INTERVAL_S
        super().__init__(app, *args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            leading = self.lease.hold()
        except redis.RedisError as exc:
            log.warning("beat: broker unreachable, not scheduling: %s", exc)
            leading = False
        if leading != self.leading:
            log.info("beat %s %s", self.lease.holder,
                     "is now the leader" if leading else "is standing by")
            self.leading = leading
        if not leading:
            return BEAT_STANDBY_POLL_S
        return float(super().tick(*args, **kwargs))

    def close(self) -> None:
        if self.leading:
            try:
                self.lease.release()
            except redis.RedisError as exc:
                log.warning("beat: lease not released: %s", exc)
        self.client.close()
        super().close()
