"""Fleet status (``backstop status``): workers, RDS liveness, queue depths, beat leader."""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url

from backstop.config import Config
from backstop.constants import (
    BEAT_LEADER_KEY,
    CONTROL_QUEUE,
    NOTIFY_QUEUE,
    client_queue,
    rds_queue,
)
from backstop.errors import BrokerUnreachable
from backstop.orchestration.broker import broker_url, redis_client
from backstop.orchestration.heartbeat import live_beats, live_workers
from backstop.orchestration.leader import current_leader
from backstop.settings import Settings


def connect(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client of the fleet's broker (``url``, else the one the settings name) that has
    answered PING; BrokerUnreachable (password masked) if not."""
    url = url or broker_url(settings)
    try:
        client = redis_client(settings, url, socket_connect_timeout=3, socket_timeout=10)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise BrokerUnreachable(f"cannot reach broker {maybe_sanitize_url(url)}: {exc}") from None
    return client


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue``; kombu keeps one Redis list per priority step."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    keys = [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


def fleet_status(client: redis.Redis, config: Config,
                 reachable: dict[tuple[str, str], bool] | None = None) -> dict[str, Any]:
    """SPEC section 7 ``status --json``; ``reachable``: the interfaces probed (unprobed ones
    are reported unreachable)."""
    workers = live_workers(client)
    served = {name for w in workers for name in w.rds}
    clients = {name for w in workers for name in w.clients}
    queues = [CONTROL_QUEUE, *([NOTIFY_QUEUE] if config.notify else []),
              *(rds_queue(r.name) for r in config.rds),
              *(client_queue(c.name) for c in config.clients)]
    probed = reachable or {}
    beats = live_beats(client)
    hashes = {w.name: w.config_hash for w in workers} | {b["name"]: b["config_hash"]
                                                         for b in beats}
    return {
        "workers": [{"name": w.name, "rds": w.rds, "clients": w.clients, "control": w.control,
                     "pid": w.pid, "host": w.host, "config_hash": w.config_hash}
                    for w in sorted(workers, key=lambda w: w.name)],
        "beats": [{"name": b["name"], "leader": b["leader"], "pid": b["pid"],
                   "host": b["host"], "config_hash": b["config_hash"]} for b in beats],
        "config_mismatch": mismatched(hashes),
        "rds": [{"name": r.name, "live": r.name in served,
                 "interfaces": [{"name": i.name, "address": i.address,
                                 "port": config.port_of(i),
                                 "reachable": probed.get((r.name, i.name), False)}
                                for i in r.interfaces]} for r in config.rds],
        "clients": [{"name": c.name, "live": c.name in clients} for c in config.clients],
        "queues": [{"name": q, "depth": queue_depth(client, q)} for q in queues],
        "beat_leader": current_leader(client, BEAT_LEADER_KEY),
    }


def mismatched(hashes: dict[str, str]) -> list[str]:
    """The processes whose config hash differs from the majority's (SPEC section 13); on a
    tie, the hash that sorts first counts as the majority's."""
    counts = Counter(hashes.values())
    if len(counts) <= 1:
        return []
    majority = min(counts, key=lambda h: (-counts[h], h))
    return sorted(name for name, found in hashes.items() if found != majority)
