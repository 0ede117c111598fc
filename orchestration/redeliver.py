"""Messages held by a worker that died go back on their queues.

Kombu's Redis transport keeps a delivered, unacknowledged message in its ``unacked`` hash and
puts it back only once the visibility timeout has passed: hours here, because a backup may
run that long. Every Backstop worker says in its heartbeat which delivery tags it holds
(orchestration/heartbeat.py), so a message held for longer than the longest heartbeat TTL of
the live workers (10 s with RDS and control workers alone; 45 s once lean client workers are
live, which beat every 15 s) that no live worker holds was taken by one that died (or by a
broker connection that is gone), and is put back now, through kombu's own restore. Running
a message twice does nothing twice: an occurrence is opened once, a failover added once, a
run claimed once under its lease.

While some live worker does not say what it holds (one of an older release), only control
messages held for over ``CONTROL_REDELIVER_AFTER_S`` are put back, as before; backups are
then sent again by the watchdog from the run ledger.
"""

from __future__ import annotations

import json
import logging
import time
from typing import cast

from celery import Celery
from kombu.transport import redis as kombu_redis

from backstop.constants import CONTROL_QUEUE, CONTROL_REDELIVER_AFTER_S, HEARTBEAT_TTL_S
from backstop.orchestration.heartbeat import live_workers

log = logging.getLogger(__name__)


def redeliver_stale(app: Celery, older_than_s: float | None = None,
                    unsure_after_s: float = CONTROL_REDELIVER_AFTER_S) -> int:
    """Put back on its queue each message held by no live worker for over ``older_than_s``,
    by default the longest heartbeat TTL of a live worker (a message taken just now is
    listed in its holder's next heartbeat, not before); ``unsure_after_s`` and the control
    queue only, while a live worker does not say what it holds. Returns how many went
    back."""
    restored = 0
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        if not isinstance(channel, kombu_redis.Channel):  # only Redis keeps an unacked hash
            return 0
        client = channel.client
        live = live_workers(client)
        sure = all(worker.held is not None for worker in live)
        held = {tag for worker in live for tag in worker.held or ()}
        listed_within = (older_than_s if older_than_s is not None
                         else max([HEARTBEAT_TTL_S, *(worker.ttl for worker in live)]))
        cutoff = time.time() - (listed_within if sure else unsure_after_s)
        for raw_tag in client.zrangebyscore(channel.unacked_index_key, "-inf", cutoff):
            tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
            message = client.hget(channel.unacked_key, tag)
            if message is None:  # acknowledged meanwhile
                continue
            payload, _exchange, routing_key = json.loads(message)
            orphaned = (tag not in held) if sure else (routing_key == CONTROL_QUEUE)
            if orphaned:
                cast(kombu_redis.QoS, channel.qos).restore_by_tag(tag)
                restored += 1
                headers = payload.get("headers") or {}
                log.warning("message %s (%s %s) went back on its queue %s: %s", tag,
                            headers.get("task"), headers.get("argsrepr"), routing_key,
                            "held by no live worker" if sure else
                            f"unacknowledged for over {unsure_after_s:.0f} s")
    return restored
