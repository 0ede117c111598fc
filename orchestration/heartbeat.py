"""Worker heartbeats in Redis: who is alive, which RDS it serves, whether it runs control.

Each worker writes ``{name, rds, clients, control, pid, host, config_hash, held, ttl, at}``
into one hash at its own pace (every ``HEARTBEAT_INTERVAL_S`` for RDS and control workers,
every ``CLIENT_HEARTBEAT_INTERVAL_S`` for a lean client worker), in one command, stamped with
the Redis server's clock (so hosts with skewed clocks agree): the server's TIME is read at
start and every ``CLOCK_CHECK_S``, and carried forward in between by the host's monotonic
clock, which a clock step on the host does not move. It removes its entry on a clean
shutdown. A worker whose stamp is older than the ``ttl`` its heartbeat carries is gone:
killed, hung, or cut off from the broker. Liveness of an RDS (or client) is "some live
worker serves it". ``held`` lists the delivery tags of the messages the worker has taken and
not acknowledged yet (running, or waiting for their countdown): a message that no live
worker holds was taken by one that died (orchestration/redeliver.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import bootsteps

from backstop.constants import (
    BEATS_KEY,
    CLIENT_HEARTBEAT_INTERVAL_S,
    CLIENT_HEARTBEAT_TTL_S,
    CLIENT_QUEUE_PREFIX,
    CONTROL_QUEUE,
    HEARTBEAT_FORGET_S,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TTL_S,
    HEARTBEATS_KEY,
    RDS_QUEUE_PREFIX,
)
from backstop.orchestration.broker import redis_client

# How often a worker reads the server's clock again; in between, its monotonic clock may
# drift from the server's by what NTP slews at most (500 ppm): 0.3 s over this.
CLOCK_CHECK_S = 600.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerBeat:
    name: str
    rds: list[str]
    control: bool
    pid: int
    host: str
    at: float
    clients: list[str] = field(default_factory=list)
    config_hash: str = ""  # of the config it runs (SPEC section 13)
    # delivery tags it holds unacknowledged; None: a worker that does not say
    held: list[str] | None = None
    # gone once its stamp is older than this (a worker of an older release says nothing)
    ttl: float = HEARTBEAT_TTL_S

    def age_s(self, now: float) -> float:
        return now - self.at

    def live(self, now: float) -> bool:
        return self.age_s(now) <= self.ttl


@dataclass(frozen=True)
class Pace:
    """How often a worker beats, and how long after its last beat it counts as gone."""

    interval_s: float
    ttl_s: float


RDS_PACE = Pace(HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_S)
CLIENT_PACE = Pace(CLIENT_HEARTBEAT_INTERVAL_S, CLIENT_HEARTBEAT_TTL_S)


def server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


class ServerClock:
    """The broker's clock, as this process can tell it without asking each time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.read_at = -CLOCK_CHECK_S
        self.offset = 0.0  # server time minus this host's monotonic clock

    def now(self) -> float:
        if time.monotonic() - self.read_at >= CLOCK_CHECK_S:
            self.offset = server_time(self.client) - time.monotonic()
            self.read_at = time.monotonic()
        return time.monotonic() + self.offset


def served(queues: list[str], prefix: str) -> list[str]:
    """The names a worker serves by consuming ``prefix + name`` queues."""
    return sorted(q.removeprefix(prefix) for q in queues if q.startswith(prefix))


def write_heartbeat(client: redis.Redis, name: str, queues: list[str], at: float,
                    config_hash: str = "", held: list[str] | None = None,
                    ttl_s: float = HEARTBEAT_TTL_S) -> None:
    """One heartbeat, stamped ``at`` (the server's clock): a single command."""
    beat = {"name": name, "rds": served(queues, RDS_QUEUE_PREFIX),
            "clients": served(queues, CLIENT_QUEUE_PREFIX), "control": CONTROL_QUEUE in queues,
            "pid": os.getpid(), "host": socket.gethostname(), "at": at,
            "config_hash": config_hash, "held": held, "ttl": ttl_s}
    client.hset(HEARTBEATS_KEY, name, json.dumps(beat))


def held_tags(consumer: Any) -> list[str] | None:
    """The delivery tags a Celery consumer holds unacknowledged, from its channel's QoS (the
    same bookkeeping kombu's ``can_consume`` counts prefetch with): none before its task
    consumer exists; None on a transport that keeps no such list."""
    tasks = getattr(consumer, "task_consumer", None)
    if tasks is None:
        return []
    qos = getattr(tasks.channel, "qos", None)
    delivered, acked = getattr(qos, "_delivered", None), getattr(qos, "_dirty", None)
    if delivered is None or acked is None:
        return None
    return sorted(str(tag) for tag in list(delivered) if tag not in acked)


def write_beat_heartbeat(client: redis.Redis, name: str, leading: bool,
                         config_hash: str) -> None:
    """A beat's heartbeat (in its own hash: a beat is no worker)."""
    beat = {"name": name, "leader": leading, "pid": os.getpid(),
            "host": socket.gethostname(), "at": server_time(client),
            "config_hash": config_hash}
    client.hset(BEATS_KEY, name, json.dumps(beat))


def live_beats(client: redis.Redis) -> list[dict[str, Any]]:
    """The beats whose heartbeat is fresh."""
    now = server_time(client)
    found = [json.loads(value) for value in client.hgetall(BEATS_KEY).values()]
    stale = [b["name"] for b in found if now - b["at"] > HEARTBEAT_FORGET_S]
    if stale:
        client.hdel(BEATS_KEY, *stale)
    return sorted((b for b in found if now - b["at"] <= HEARTBEAT_TTL_S),
                  key=lambda b: b["name"])


def read_heartbeats(client: redis.Redis) -> tuple[list[WorkerBeat], float]:
    """Every worker's latest heartbeat (entries older than a day are dropped) and 'now'."""
    now = server_time(client)
    beats, forgotten = [], []
    for name, value in client.hgetall(HEARTBEATS_KEY).items():
        try:
            beat = WorkerBeat(**json.loads(value))
        except (ValueError, TypeError):
            forgotten.append(name)  # not written by a Backstop worker: not a worker
            continue
        if beat.age_s(now) > HEARTBEAT_FORGET_S:
            forgotten.append(name)
        else:
            beats.append(beat)
    if forgotten:
        client.hdel(HEARTBEATS_KEY, *forgotten)
    return beats, now


def live_workers(client: redis.Redis) -> list[WorkerBeat]:
    beats, now = read_heartbeats(client)
    return [b for b in beats if b.live(now)]


def served_rds(client: redis.Redis) -> set[str]:
    """The RDS that some live worker serves."""
    return {name for worker in live_workers(client) for name in worker.rds}


@dataclass(frozen=True)
class Seen:
    """When a client was last served: the age of the freshest heartbeat of a worker serving
    it, and whether some worker serving it is live (by its own heartbeat's TTL)."""

    age_s: float
    live: bool


def client_seen(client: redis.Redis, name: str) -> Seen | None:
    """How recently client ``name`` was served (None: never, or a day ago)."""
    beats, now = read_heartbeats(client)
    serving = [b for b in beats if name in b.clients]
    if not serving:
        return None
    return Seen(min(b.age_s(now) for b in serving), any(b.live(now) for b in serving))


class HeartbeatStep(bootsteps.StartStopStep):
    """Consumer boot step: beats on the worker's own timer, so a wedged worker goes quiet."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.client: redis.Redis | None = None

    def start(self, parent: Any) -> None:
        app = parent.app
        pace: Pace = getattr(app, "pace", RDS_PACE)
        # a lean client worker beats through the one client it uses for everything else
        self.client = (app.shared_client() if getattr(app, "lean", False) else
                       redis_client(app.settings, app.conf.broker_url, socket_timeout=2,
                                    socket_connect_timeout=2))
        clock = ServerClock(self.client)
        queues = sorted((app.amqp.queues.consume_from or {}).keys())
        name = parent.hostname
        settings = getattr(app, "settings", None)
        config_hash = settings.config_hash if settings is not None else ""

        def beat() -> None:
            try:
                assert self.client is not None
                write_heartbeat(self.client, name, queues, clock.now(), config_hash,
                                held_tags(parent), pace.ttl_s)
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)

        beat()
        self.tref = parent.timer.call_repeatedly(pace.interval_s, beat)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, parent: Any) -> None:
        """A clean shutdown takes the worker out of the fleet at once."""
        self.stop(parent)
        if self.client is not None:
            try:
                self.client.hdel(HEARTBEATS_KEY, parent.hostname)
            except redis.RedisError as exc:
                log.warning("heartbeat not removed: %s", exc)
            # the shared client of a lean worker is the process's: tasks still use it
            if not getattr(parent.app, "lean", False):
                self.client.close()
            self.client = None
