"""How fast pools fill: samples of each pool's used bytes, kept in the broker.

Whoever makes a pools report (the metrics exporter once a minute, ``backstop pools``,
``backstop report``) records each pool's used bytes, at most once every
POOL_SAMPLE_EVERY_S; samples older than POOL_SAMPLES_KEPT_S go. A pool's growth over a
period is its use now less its use at the oldest sample of the period; ``days_until_full``
is its free bytes over that growth per day: null when it did not grow, or when less than
MIN_SPAN_S of the period has samples.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import redis

from backstop.constants import POOL_SAMPLE_EVERY_S, POOL_SAMPLES_KEPT_S, POOL_USED_KEY

MIN_SPAN_S = 3600.0
# A pools report's own growth period (``report`` has its --since).
POOLS_PERIOD = timedelta(hours=24)


def sample_pools(client: redis.Redis, report: list[dict[str, Any]], now: datetime) -> None:
    """Record each pool's used bytes unless a recent sample exists."""
    keys = [POOL_USED_KEY.format(pool=pool["name"]) for pool in report]
    read = client.pipeline(transaction=False)
    for key in keys:
        read.zrevrange(key, 0, 0, withscores=True)
    stamp = now.timestamp()
    write = client.pipeline(transaction=False)
    for key, pool, newest in zip(keys, report, read.execute(), strict=True):
        if newest and stamp - float(newest[0][1]) < POOL_SAMPLE_EVERY_S:
            continue
        write.zadd(key, {f"{stamp:.0f}:{pool['used_bytes']}": stamp})
        write.zremrangebyscore(key, "-inf", stamp - POOL_SAMPLES_KEPT_S)
    write.execute()


def days_until_full(client: redis.Redis, pool: dict[str, Any], since: datetime,
                    now: datetime) -> float | None:
    """Days until the pool of a pools report line is full at its growth since ``since``."""
    oldest = client.zrangebyscore(POOL_USED_KEY.format(pool=pool["name"]), since.timestamp(),
                                  "+inf", start=0, num=1, withscores=True)
    if not oldest:
        return None
    member, at = oldest[0]
    span_s = now.timestamp() - float(at)
    grown = int(pool["used_bytes"]) - int(member.decode().split(":")[1])
    if span_s < MIN_SPAN_S or grown <= 0:
        return None
    return round(float(pool["free_bytes"]) / (grown / (span_s / 86400)), 1)


def with_days_until_full(client: redis.Redis, report: list[dict[str, Any]], since: datetime,
                         now: datetime) -> list[dict[str, Any]]:
    """The report's lines with ``days_until_full`` (sampling them first)."""
    sample_pools(client, report, now)
    return [{**pool, "days_until_full": days_until_full(client, pool, since, now)}
            for pool in report]
