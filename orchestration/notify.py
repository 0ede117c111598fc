"""Notifications (SPEC section 10): a message to each ``notify`` target when an occurrence
settles, if any of the target's ``when`` values applies to it.

The control worker that settles an occurrence (only one can) sends one ``backstop.notify``
task. Each attempt of each target is claimed in Redis before it is made (``SET NX``), so a
redelivered message, a second control worker or a retry sent twice never sends a second
message: at most one per occurrence and target. A target that cannot be reached is tried
again with back-off, by a new message on the notify queue, until an hour has passed; each
failed attempt counts in ``backstop_notifications_failed_total{target}``. Nothing of this
is on a backup's path. URLs are logged without their passwords.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from backstop.config import Config, NotifyTarget, NotifyWhen, mask_url
from backstop.constants import (
    METRICS_NOTIFY_FAILED_KEY,
    NOTIFY_CLAIM_KEY,
    NOTIFY_CLAIM_TTL_S,
    NOTIFY_GIVE_UP_S,
    NOTIFY_QUEUE,
    NOTIFY_RETRY_FIRST_S,
    NOTIFY_RETRY_MAX_S,
    NOTIFY_TIMEOUT_S,
    TASK_NOTIFY,
)
from backstop.orchestration.control import Send
from backstop.orchestration.ledger import Ledger
from backstop.runs import Occurrence, OccurrenceState, Run, RunState

log = logging.getLogger(__name__)

# The order in which a message's kind is chosen among those that apply.
KIND_ORDER = (NotifyWhen.FAILURE, NotifyWhen.FAILOVER, NotifyWhen.SUCCESS, NotifyWhen.MISSED)


@dataclass(frozen=True)
class Message:
    """What a target is told about a settled occurrence."""

    kind: NotifyWhen
    applies: frozenset[NotifyWhen]
    occurrence: str
    event: str          # the event triggered (the origin event)
    task: str | None
    state: str          # succeeded | failed | missed
    runs: list[Run]

    def payload(self) -> dict[str, Any]:
        """A webhook's JSON object."""
        return {"kind": self.kind.value, "occurrence": self.occurrence, "event": self.event,
                "task": self.task, "state": self.state,
                "runs": [r.to_json() for r in self.runs],
                "title": self.title(), "body": self.body()}

    def title(self) -> str:
        what = {NotifyWhen.FAILURE: "failed", NotifyWhen.SUCCESS: "succeeded",
                NotifyWhen.MISSED: "was missed",
                NotifyWhen.FAILOVER: f"needed its failover ({self.state})"}[self.kind]
        return f"Backstop: {self.event} {what}"

    def body(self) -> str:
        lines = [f"occurrence {self.occurrence}: {self.state}"
                 + (f" (task {self.task})" if self.task else "")]
        for run in self.runs:
            line = f"run {run.run_id}: event {run.event} ({run.trigger}), {run.state}"
            if run.error is not None:
                line += f": {run.error.reason or run.error.kind}: {run.error.message}"
            if run.saveset:
                line += f"; saveset {run.saveset}"
            lines.append(line)
        return "\n".join(lines)


def message_for(config: Config, occurrence: Occurrence, runs: list[Run]) -> Message | None:
    """The message about a settled occurrence; None while it is open or when nothing applies."""
    applies = set()
    if occurrence.state is OccurrenceState.FAILED:
        applies.add(NotifyWhen.FAILURE)
    if any(r.failover_of or r.state is RunState.STORAGE_UNAVAILABLE for r in runs):
        applies.add(NotifyWhen.FAILOVER)
    if occurrence.state is OccurrenceState.SUCCEEDED:
        applies.add(NotifyWhen.SUCCESS)
    if occurrence.state is OccurrenceState.MISSED:
        applies.add(NotifyWhen.MISSED)
    if not applies:
        return None
    event = config.events_by_name.get(occurrence.event)
    return Message(kind=next(k for k in KIND_ORDER if k in applies),
                   applies=frozenset(applies), occurrence=occurrence.occurrence,
                   event=occurrence.event, task=getattr(event, "task", None),
                   state=("missed" if occurrence.state is OccurrenceState.MISSED
                          else "succeeded" if occurrence.state is OccurrenceState.SUCCEEDED
                          else "failed"), runs=runs)


def shown(index: int, target: NotifyTarget) -> str:
    """A target as logs name it: its position and its URL without password."""
    return f"notify[{index}] ({mask_url(target.address)})"


def deliver(target: NotifyTarget, message: Message) -> str | None:
    """Send ``message`` to ``target``: None when delivered, else why not (no URL in it)."""
    if target.webhook is not None:
        # credentials go in a header, never in a URL that httpx (or anyone) logs
        url = httpx.URL(target.webhook)
        auth = (url.username, url.password) if url.userinfo else None
        try:
            answer = httpx.post(url.copy_with(username=None, password=None),
                                json=message.payload(), auth=auth, timeout=NOTIFY_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if answer.is_success else f"HTTP {answer.status_code}"
    import apprise  # its plugins load in a second: only where there are Apprise targets

    sender = apprise.Apprise()
    sender.add(target.address)
    if sender.notify(title=message.title(), body=message.body()):
        return None
    return "Apprise could not deliver it"


class Notifier:
    """Sends the messages of settled occurrences (the ``backstop.notify`` task's work)."""

    def __init__(self, config: Config, ledger: Ledger, send: Send) -> None:
        self.config, self.ledger, self.send = config, ledger, send

    @property
    def client(self) -> redis.Redis:
        return self.ledger.client

    def notify(self, occurrence: str, target: int | None = None, attempt: int = 0,
               first_at: float | None = None) -> int:
        """Attempt ``attempt`` for one target, or the first attempt for every target whose
        ``when`` applies; returns how many messages were delivered."""
        found = self.ledger.occurrence(occurrence)
        if found is None or found.state is OccurrenceState.OPEN:
            return 0
        message = message_for(self.config, found, self.ledger.runs_of(occurrence))
        if message is None:
            return 0
        if target is None:
            wanted = [i for i, t in enumerate(self.config.notify)
                      if message.applies & set(t.when)]
        else:  # a retry (of a target the config may have lost since)
            wanted = [target] if target < len(self.config.notify) else []
        first_at = first_at or time.time()
        return sum(self._attempt(occurrence, i, attempt, first_at, message) for i in wanted)

    def _attempt(self, occurrence: str, index: int, attempt: int, first_at: float,
                 message: Message) -> bool:
        claim = NOTIFY_CLAIM_KEY.format(occ=occurrence, target=index, attempt=attempt)
        if not self.client.set(claim, "1", nx=True, ex=NOTIFY_CLAIM_TTL_S):
            return False  # made (or being made) by another delivery of this message
        target = self.config.notify[index]
        why = deliver(target, message)
        if why is None:
            log.info("%s: told of %s (%s)", shown(index, target), occurrence, message.kind)
            return True
        self.client.hincrbyfloat(METRICS_NOTIFY_FAILED_KEY, json.dumps([str(index)]), 1)
        delay = min(NOTIFY_RETRY_FIRST_S * 2 ** attempt, NOTIFY_RETRY_MAX_S)
        if time.time() + delay - first_at > NOTIFY_GIVE_UP_S:
            log.error("%s: could not tell of %s (%s); gave up after an hour", shown(index, target),
                      occurrence, why)
            return False
        log.warning("%s: could not tell of %s (%s); trying again in %.0f s",
                    shown(index, target), occurrence, why, delay)
        self.send(TASK_NOTIFY, [occurrence, index, attempt + 1, first_at], NOTIFY_QUEUE,
                  f"occurrence={occurrence} target={index} attempt={attempt + 1}",
                  countdown=delay)
        return False
