"""Control-plane messages held by a worker that died go back on their queue.

Kombu's Redis transport keeps a delivered, unacknowledged message in its ``unacked`` hash and
puts it back only once the visibility timeout has passed: hours here, because a backup may
run that long. Control tasks are short, and running one twice does nothing twice (an
occurrence is opened once, a failover added once, a job claimed once), so one held for
longer than ``CONTROL_REDELIVER_AFTER_S`` is put back now, through kombu's own restore.
"""

from __future__ import annotations

import json
import time
from typing import cast

from celery import Celery
from kombu.transport import redis as kombu_redis

from core.constants import CONTROL_QUEUE, CONTROL_REDELIVER_AFTER_S


def redeliver_stale(app: Celery, queue: str = CONTROL_QUEUE,
                    older_than_s: float = CONTROL_REDELIVER_AFTER_S) -> int:
    """Put back on ``queue`` its messages unacknowledged for over ``older_than_s``."""
    restored = 0
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        if not isinstance(channel, kombu_redis.Channel):  # only Redis keeps an unacked hash
            return 0
        client = channel.client
        cutoff = time.time() - older_than_s
        for raw_tag in client.zrangebyscore(channel.unacked_index_key, "-inf", cutoff):
            tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
            held = client.hget(channel.unacked_key, tag)
            if held is None:  # acknowledged meanwhile
                continue
            _message, _exchange, routing_key = json.loads(held)
            if routing_key == queue:
                cast(kombu_redis.QoS, channel.qos).restore_by_tag(tag)
                restored += 1
    return restored
