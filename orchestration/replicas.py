"""Writes that survive the loss of the master (SPEC section 13).

After a write that Backstop acknowledges (an occurrence recorded, a run ended, a saveset
cataloged), :meth:`Replicas.wait` has one replica confirm it, with Redis ``WAIT``, for up to
``broker_wait_ms``. ``WAIT`` covers the writes of the connection it runs on, so it runs
after a small write of its own (a barrier) on one connection: the replication stream is in
order, so a replica that has the barrier has every write that was done before it, on any
connection. Without replicas (a single server, the embedded broker) nothing waits; when no
replica confirms in time, the write stands, a warning is logged and
``backstop_replication_lag_total`` counts it.
"""

from __future__ import annotations

import logging
import time

import redis

from backstop.constants import METRICS_REPLICATION_LAG_KEY, REPLICATION_BARRIER_KEY

log = logging.getLogger(__name__)

# How long the number of replicas the master has is trusted, in seconds.
REPLICAS_CHECKED_EVERY_S = 10.0


class Replicas:
    def __init__(self, client: redis.Redis, wait_ms: int) -> None:
        self.client, self.wait_ms = client, wait_ms
        self._known: int = 0
        self._checked_at = -REPLICAS_CHECKED_EVERY_S

    def count(self) -> int:
        """Replicas connected to the master (INFO replication), at most 10 s old."""
        if time.monotonic() - self._checked_at >= REPLICAS_CHECKED_EVERY_S:
            info = self.client.info("replication")
            self._known = int(info.get("connected_slaves", 0))
            self._checked_at = time.monotonic()
        return self._known

    def wait(self, what: str) -> bool:
        """Have one replica confirm every write done so far; False when none did in time."""
        if not self.wait_ms or not self.count():
            return True
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(REPLICATION_BARRIER_KEY)
        pipe.wait(1, self.wait_ms)
        acknowledged = int(pipe.execute()[1])
        if acknowledged >= 1:
            return True
        log.warning("%s: no replica confirmed the write within %d ms; it stands on the "
                    "master only", what, self.wait_ms)
        self.client.incr(METRICS_REPLICATION_LAG_KEY)
        self._checked_at = -REPLICAS_CHECKED_EVERY_S  # look at the replicas again
        return False
