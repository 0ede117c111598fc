"""Runs and occurrences: the typed records of the run ledger (SPEC section 7).

A :class:`Run` is one attempt to perform an event; an :class:`Occurrence` is one triggering
of an event, with its run and at most one failover run. Each record has this one typed
definition: its JSON (``backstop runs --json``, the ledger's Redis hashes) is derived from
it by :meth:`Run.to_json` / :meth:`Run.encode` and read back by :meth:`Run.decode` only.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, model_serializer, model_validator

from backstop.config import CommandEvent, FollowUp, Level, VerifyEvent
from backstop.errors import Reason
from backstop.model import Saveset

# ISO 8601 with the offset written out (``+00:00``), as every record has always had it.
Timestamp = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str,
                                                when_used="json")]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RunState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    SUPPRESSED = "suppressed"
    MISSED = "missed"

    @property
    def ended(self) -> bool:
        return self not in ACTIVE


# A run in one of these may still change; every other state is final.
ACTIVE = frozenset({RunState.QUEUED, RunState.RUNNING})
TERMINAL = frozenset(RunState) - ACTIVE


class OccurrenceState(enum.StrEnum):
    OPEN = "open"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    MISSED = "missed"


class Trigger(enum.StrEnum):
    SCHEDULE = "schedule"
    ADHOC = "adhoc"
    FOLLOW_UP = "follow_up"
    FAILOVER = "failover"


class RunKind(enum.StrEnum):
    BACKUP = "backup"
    VERIFY = "verify"
    COMMAND = "command"


class ErrorKind(enum.StrEnum):
    STORAGE_UNAVAILABLE = "storage_unavailable"
    SOURCE_ERROR = "source_error"
    CLIENT_UNREACHABLE = "client_unreachable"
    FAILOVER_FAILED = "failover_failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    HOOK_FAILED = "hook_failed"  # a task's `before` command failed or timed out


class Record(BaseModel):
    """Base of the ledger's records: immutable; keys they do not know are ignored, so that
    records written by an older Backstop still read."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class RunError(Record):
    """Why a run did not succeed; ``reason`` only for ``storage_unavailable``."""

    kind: ErrorKind
    message: str
    reason: Reason | None = None

    @model_serializer(mode="wrap")
    def _without_empty_reason(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.reason is None:
            data.pop("reason", None)
        return data


class Progress(Record):
    files: int
    bytes: int
    files_total: int
    bytes_total: int


class MigrationOutcome(Record):
    """What the migration task of a succeeded run did."""

    state: RunState
    saveset: str | None = None
    bad: tuple[str, ...] = ()
    error: RunError | None = None


@dataclass(frozen=True)
class RunSpec:
    """What a backup run does and where, fixed when the run is created (events.resolve)."""

    event: str            # the event whose storage settings the run uses
    origin_event: str     # the event that was triggered
    trigger: Trigger
    task: str
    level: Level          # the requested level
    enforce_full: bool
    full_interval: timedelta | None
    media_pool: str
    data_store: str
    rds: str
    drive: str | None
    interface: str | None  # the interface a client's data goes through; None without client
    follow_ups: tuple[FollowUp, ...]
    migration_task: str | None
    client: str | None = None  # the client that reads the task's source, if any
    # The run this one fails over for, and whether it only moved to the pool's failover pool.
    failover_of: str | None = None
    pool_redirect: bool = False

    @property
    def is_failover(self) -> bool:
        return self.failover_of is not None


class Run(Record):
    """One run, as the ledger keeps it: the SPEC section 7 record plus its bookkeeping."""

    run_id: str
    occurrence: str
    kind: RunKind = RunKind.BACKUP
    event: str
    origin_event: str
    trigger: Trigger
    failover_of: str | None = None
    failover_run: str | None = None
    task: str | None = None
    level: Level | None = None
    effective_level: Level | None = None
    enforce_full: bool = False
    full_interval_s: float | None = None
    media_pool: str | None = None
    data_store: str | None = None
    rds: str | None = None
    drive: str | None = None
    interface: str | None = None
    client: str | None = None
    pool_redirect: bool = False
    follow_ups: tuple[FollowUp, ...] = ()
    migration_task: str | None = None
    drill: bool = False
    # a drill's first run ends StorageUnavailable(drill_reason) before writing (SPEC 10)
    drill_reason: Reason | None = None
    state: RunState = RunState.QUEUED
    error: RunError | None = None
    saveset: str | None = None
    files: int | None = None
    bytes: int | None = None
    queued_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    # last time a message for it was sent (by dispatch, or again by the watchdog)
    sent_at: Timestamp | None = None
    attempts: int = 0
    worker: str | None = None
    pid: int | None = None
    progress: Progress | None = None
    cancel_requested: bool = False
    # verify and command runs: the occurrence that triggered them, and how it ended
    parent: str | None = None
    parent_state: OccurrenceState | None = None
    migration: MigrationOutcome | None = None
    # what the run noticed that its operator should know (e.g. a file changed while read)
    warnings: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_older_records(cls, data: Any) -> Any:
        """Records of Backstop 0.1 kept these settings in a nested ``spec`` only."""
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            spec = data["spec"]
            data = {"full_interval_s": spec.get("full_interval"),
                    "pool_redirect": spec.get("pool_redirect", False),
                    "rds": spec.get("rds"), **data}
        return data

    @classmethod
    def for_backup(cls, run_id: str, occurrence: str, spec: RunSpec) -> Run:
        interval = spec.full_interval.total_seconds() if spec.full_interval else None
        return cls(
            run_id=run_id, occurrence=occurrence, event=spec.event,
            origin_event=spec.origin_event, trigger=spec.trigger, failover_of=spec.failover_of,
            task=spec.task, level=spec.level, enforce_full=spec.enforce_full,
            full_interval_s=interval, media_pool=spec.media_pool, data_store=spec.data_store,
            rds=spec.rds, drive=spec.drive, interface=spec.interface, client=spec.client,
            pool_redirect=spec.pool_redirect, follow_ups=spec.follow_ups,
            migration_task=spec.migration_task, queued_at=utc_now())

    @classmethod
    def for_job(cls, run_id: str, occurrence: str, definition: VerifyEvent | CommandEvent,
                trigger: Trigger, parent: str | None = None,
                parent_state: OccurrenceState | None = None) -> Run:
        """A verify or command run: no storage settings of its own."""
        return cls(
            run_id=run_id, occurrence=occurrence, kind=RunKind(definition.kind),
            event=definition.name, origin_event=definition.name, trigger=trigger,
            task=getattr(definition, "task", None), follow_ups=tuple(definition.follow_ups),
            parent=parent, parent_state=parent_state, queued_at=utc_now())

    @property
    def spec(self) -> RunSpec:
        """What the run does and where (backup runs only)."""
        assert self.kind is RunKind.BACKUP and self.level is not None
        assert self.task and self.media_pool and self.data_store and self.rds
        interval = (timedelta(seconds=self.full_interval_s)
                    if self.full_interval_s is not None else None)
        return RunSpec(
            event=self.event, origin_event=self.origin_event, trigger=self.trigger,
            task=self.task, level=self.level, enforce_full=self.enforce_full,
            full_interval=interval, media_pool=self.media_pool, data_store=self.data_store,
            rds=self.rds, drive=self.drive, interface=self.interface,
            follow_ups=self.follow_ups, migration_task=self.migration_task,
            client=self.client, failover_of=self.failover_of,
            pool_redirect=self.pool_redirect)

    @property
    def readable(self) -> str:
        """What Flower shows as the arguments of the run's task."""
        if self.kind is not RunKind.BACKUP:
            return f"event={self.event} occurrence={self.occurrence} run={self.run_id}"
        drill = f" drill={self.drill_reason or 'true'}" if self.drill else ""
        return (f"event={self.event} occurrence={self.occurrence} run={self.run_id} "
                f"level={self.level} pool={self.media_pool}{drill}")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def encode(cls, values: dict[str, Any]) -> dict[str, str]:
        """Some fields of a run, each as its JSON text (the ledger's hash values)."""
        dumped = cls.model_construct(**values).model_dump(mode="json", include=set(values))
        return {key: json.dumps(value) for key, value in dumped.items()}

    def encoded(self) -> dict[str, str]:
        """Every field that differs from its default, and the state (the ledger's scripts
        read it), each as its JSON text; not the id, which is in the record's key: a fleet
        keeps a million of these."""
        return self.encode({name: value for name, value in self if name != "run_id" and (
            name == "state" or value != Run.model_fields[name].default)})

    @classmethod
    def decode(cls, raw: dict[str, str], run_id: str) -> Run:
        return cls.model_validate({"run_id": run_id,
                                   **{key: json.loads(value) for key, value in raw.items()}})


@dataclass(frozen=True)
class RunEnd:
    """How a run ended: the fields its end sets (None: left as they are)."""

    state: RunState
    error: RunError | None = None
    saveset: str | None = None
    effective_level: Level | None = None
    files: int | None = None
    bytes: int | None = None
    pid: int | None = None
    warnings: tuple[str, ...] | None = None

    @classmethod
    def succeeded(cls, saveset: Saveset, pid: int | None = None,
                  warnings: tuple[str, ...] = ()) -> RunEnd:
        return cls(RunState.SUCCEEDED, saveset=saveset.id, effective_level=saveset.level,
                   files=saveset.files, bytes=saveset.bytes, pid=pid,
                   warnings=warnings or None)

    @classmethod
    def failed(cls, kind: ErrorKind, message: str) -> RunEnd:
        return cls(RunState.FAILED, error=RunError(kind=kind, message=message))

    @classmethod
    def unavailable(cls, reason: Reason, message: str) -> RunEnd:
        return cls(RunState.STORAGE_UNAVAILABLE, error=RunError(
            kind=ErrorKind.STORAGE_UNAVAILABLE, reason=reason, message=message))

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


class Occurrence(Record):
    """One triggering of an event (a tick, an ad-hoc start, a follow-up)."""

    occurrence: str
    event: str
    trigger: Trigger
    parent: str | None = None
    state: OccurrenceState = OccurrenceState.OPEN
    created_at: Timestamp
    settled_at: Timestamp | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def encode(self) -> dict[str, str]:
        """The fields that are set, each as its JSON text; not the id, which is in the
        record's key."""
        return {key: json.dumps(value) for key, value in self.to_json().items()
                if value is not None and key != "occurrence"}

    @classmethod
    def decode(cls, raw: dict[str, str], occurrence: str) -> Occurrence:
        return cls.model_validate({"occurrence": occurrence,
                                   **{key: json.loads(value) for key, value in raw.items()}})
