"""The configuration file as plain data (SPEC section 6).

Each section is a list of named entities. Structure and values are checked here, entity by
entity; references between entities are checked in :mod:`backstop.config_refs`, and the
file is read and every problem collected in :mod:`backstop.config_load`.
"""

from __future__ import annotations

import enum
import re
import zoneinfo
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import bech32
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from backstop.units import Duration, Size

# Names end up in queue names (backstop.rds.<name>), medium labels and file names, so they
# are kept to a safe alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Level(enum.StrEnum):
    """Backup level of SPEC section 2."""

    FULL = "FULL"
    DIFF = "DIFF"
    INC = "INC"
    COPY = "COPY"


class FollowUpWhen(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    ALWAYS = "always"


class Model(BaseModel):
    """Base of every config entity: immutable, and unknown keys are errors, not ignored."""

    # A field's docstring is its description (docs/configuration.md is made from them).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (e.g. UTC, Europe/Berlin)") from None
    return name


# The port of an RDS's data service on an interface that names none (SPEC section 9).
DEFAULT_DATA_PORT = 7390


class Interface(Model):
    """A network address of an RDS: its data service listens there, clients send through it."""

    name: Name
    """The interface's name, as events' `interface` names it."""
    address: str = Field(min_length=1)
    """The address the data service listens on and clients connect to."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Its port; default `data_path.port`."""


class Rds(Model):
    """A storage node; workers started with ``--rds NAME`` serve its data stores."""

    name: Name
    """The RDS's name: `backstop worker --rds NAME` and `backstop serve --rds NAME`."""
    interfaces: list[Interface] = []
    """Its network addresses for clients' data; none: only its own workers write to its stores."""


class ObjectLock(Model):
    mode: Literal["COMPLIANCE", "GOVERNANCE"]
    """S3 object lock mode of every object of a saveset."""
    days: int = Field(ge=1)
    """At least this long; a saveset is locked until its retention ends, whichever is later."""


class S3Location(Model):
    """An S3 bucket (and a prefix in it) as a data store (SPEC section 14). The keys come
    from the environment variables named here, never from the file."""

    endpoint: str = Field(pattern=r"^https?://")
    """The S3 endpoint URL."""
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    """The bucket."""
    prefix: str = Field(default="", pattern=r"^$|^[A-Za-z0-9_.-][A-Za-z0-9_./-]*/$")
    """A key prefix inside the bucket, ending in `/`."""
    region: str = "us-east-1"
    """The region the bucket is in."""
    access_key_env: str
    """The environment variable holding the access key."""
    secret_key_env: str
    """The environment variable holding the secret key."""
    object_lock: ObjectLock | None = None
    """Write savesets immutable (the bucket must have object lock enabled)."""


class DataStore(Model):
    name: Name
    """The store's name."""
    rds: str
    """The RDS whose workers and data service write to it."""
    path: Path | None = None
    """A directory on that RDS (or `s3`)."""
    s3: S3Location | None = None
    """A bucket (or `path`)."""
    capacity: Size | None = None
    """A quota: the store takes at most this many bytes."""
    reserve: Size = 0
    """Bytes always left free on the file system or under the quota."""
    create: bool = False
    """`backstop up` and `backstop worker --rds` create the directory and its store marker
    when it is missing at start; a store that goes away later is offline."""

    @model_validator(mode="after")
    def _reserve_below_capacity(self) -> DataStore:
        if self.capacity is not None and self.reserve >= self.capacity:
            raise ValueError("reserve must be smaller than capacity")
        if (self.path is None) == (self.s3 is None):
            raise ValueError("a data store is either a directory (path) or a bucket (s3)")
        return self


class Media(Model):
    count: int | None = Field(default=None, ge=1)
    """How many media the pool has (labels POOL00001, ...)."""
    size: Size | None = None
    """The size of each medium."""

    @model_validator(mode="after")
    def _something_set(self) -> Media:
        if self.count is None and self.size is None:
            raise ValueError("media needs a count, a size or both")
        if self.size is not None and self.size <= 0:
            raise ValueError("media size must be positive")
        return self


class MediaPool(Model):
    name: Name
    """The pool's name."""
    data_store: str
    """The data store its savesets are written to."""
    retention: Duration
    """How long each saveset is kept; a medium whose savesets are all past it is free."""
    media: Media | None = None
    """Media count and size; none: one medium without limit."""
    failover_pool: str | None = None
    """Where a run goes when this pool is unavailable and its event has no failover event."""


class Drive(Model):
    name: Name
    """The drive's name."""
    data_store: str
    """The data store it writes to."""
    channels: int = Field(default=1, ge=1)
    """How many backups may write through it at once, fleet-wide."""


class Client(Model):
    """A host whose tasks are read there, by ``backstop worker --client NAME``."""

    name: Name
    """The client's name: `backstop worker --client NAME`."""
    # The client's own data token (read and write only its tasks' savesets, never delete);
    # without one, the client worker uses the fleet's data token.
    token_file: Path | None = None
    """The client's own data token (reads and writes only its tasks' savesets, never deletes);
    default the fleet's."""


class Tls(Model):
    """The data service speaks HTTPS with ``cert``/``key``; clients verify it against ``ca``."""

    cert: Path
    """The data service's certificate (PEM)."""
    key: Path
    """Its private key (PEM)."""
    ca: Path
    """The CA clients verify the service against."""


class DataPath(Model):
    """How clients reach the RDS data services (SPEC section 9)."""

    port: int = Field(default=DEFAULT_DATA_PORT, ge=1, le=65535)
    """The data services' port where an interface names none."""
    # default: state_dir/data-token (created mode 0600 by `backstop up`)
    token_file: Path | None = None
    """The fleet's data token; default `state_dir/data-token` (made mode 0600 by `backstop up`)."""
    tls: Tls | None = None
    """HTTPS for the data services."""
    connect_timeout: Duration = timedelta(seconds=10)
    """A connection to a data service or S3 endpoint not made within this is a failure."""
    io_timeout: Duration = timedelta(seconds=60)
    """A transfer that stalls this long is a failure; a stall is detected within `connect_timeout`
    + 2 x `io_timeout`."""

    @model_validator(mode="after")
    def _positive_timeouts(self) -> DataPath:
        if self.connect_timeout <= timedelta(0) or self.io_timeout <= timedelta(0):
            raise ValueError("connect_timeout and io_timeout must be positive")
        return self


class NotifyWhen(enum.StrEnum):
    """When an occurrence is worth a message (SPEC section 10)."""

    FAILURE = "failure"    # the occurrence failed
    FAILOVER = "failover"  # it needed its failover, whatever came of it
    SUCCESS = "success"
    MISSED = "missed"      # a tick skipped past catch_up


class NotifyTarget(Model):
    """Where messages go: a webhook (HTTP POST of a JSON object) or an Apprise URL."""

    webhook: str | None = None
    """An http(s) URL that gets a POST of a JSON object."""
    url: str | None = None
    """An Apprise URL (mail, Slack, Teams, ntfy, ...)."""
    when: list[NotifyWhen] = Field(min_length=1)
    """Which occurrences it hears of."""

    @model_validator(mode="after")
    def _one_target(self) -> NotifyTarget:
        if (self.webhook is None) == (self.url is None):
            raise ValueError("a notify target needs exactly one of webhook or url")
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ValueError(f"webhook {mask_url(self.webhook)!r} is not an http(s) URL")
        if self.url is not None:
            import apprise  # only configs that have Apprise targets pay for its plugins

            if not apprise.Apprise().add(self.url):
                raise ValueError(f"url {mask_url(self.url)!r} is not an Apprise URL that "
                                 "this host can send to (see the Apprise wiki for schemes)")
        return self

    @property
    def address(self) -> str:
        return self.webhook or self.url or ""


def mask_url(url: str) -> str:
    """``url`` without its password (``scheme://user:***@host/...``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}{at}{host}{slash}{path}"


# A command and its arguments, never run through a shell.
Argv = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]

AGE_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")


def check_recipient(text: str) -> str:
    """An age X25519 recipient (``age1…``), its bech32 checksum checked."""
    hrp, data = bech32.bech32_decode(text)
    if not AGE_RECIPIENT.fullmatch(text) or hrp != "age" or data is None:
        raise ValueError(f"{text[:16]}… is not an age recipient (age1…, 62 characters; "
                         "`backstop keys new` makes one)")
    return text


class Encryption(Model):
    """Savesets encrypted where they are read, to age X25519 recipients: any one of them can
    read them back; storage nodes, data services and buckets only ever hold ciphertext."""

    recipients: list[str] = Field(min_length=1)
    """The age recipients (`age1…`) savesets are encrypted to: the hosts' key and, say, an
    offline recovery key."""
    identity_file: Path | None = None
    """The age identity file (private keys) that reads them back; env
    `BACKSTOP_IDENTITY_FILE` wins. None on a write-only client: it backs up and never
    reads back."""

    @field_validator("recipients")
    @classmethod
    def _valid_recipients(cls, value: list[str]) -> list[str]:
        return [check_recipient(r) for r in value]


ENCRYPTION_TAGS = ("encryption:none", "encryption:own")


def _encryption_kind(value: Any) -> str:
    return ENCRYPTION_TAGS[0] if value == "none" else ENCRYPTION_TAGS[1]


# A task's `encryption:` is `none` or recipients of its own; errors speak of the one meant.
TaskEncryption = Annotated[
    Annotated[Literal["none"], Tag(ENCRYPTION_TAGS[0])]
    | Annotated[Encryption, Tag(ENCRYPTION_TAGS[1])],
    Discriminator(_encryption_kind),
]


class Stream(Model):
    """A command whose standard output is stored as a file of the saveset (a database
    dump); run on the host that reads the task, never through a shell."""

    name: str
    """The file its output is stored as, at the top of the saveset (`app.dump`)."""
    argv: Argv
    """The command and its arguments (`[pg_dump, --format=custom, --dbname=app]`)."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if value in ("", ".", "..") or "/" in value or "\0" in value or len(value) > 255:
            raise ValueError(f"{value!r} is not a file name: a stream is a file at the top "
                             "of the saveset (no '/', not '.' or '..', at most 255 characters)")
        return value


class Task(Model):
    """What to back up: a source directory and gitignore-style excludes, and the output of
    commands (`streams`), read on the task's ``client`` (by its client worker), or on the
    RDS worker when it names none."""

    name: Name
    """The task's name."""
    source: Path | None = None
    """The directory to back up, on the host that reads the task (or `streams`, or both)."""
    streams: list[Stream] = []
    """Commands whose standard output is stored as files of the saveset; a task with
    streams runs every level as FULL."""
    exclude: list[str] = []
    """gitignore-style patterns, relative to `source`."""
    client: str | None = None
    """The client that reads it; none: the RDS worker of the event's pool reads it."""
    demo: bool = False
    """`backstop up` fills a missing source with a small generated tree (the quickstart)."""
    encryption: TaskEncryption | None = None
    """The task's own recipients, `none` for plain savesets; default the top-level
    `encryption`."""
    before: list[Argv] = []
    """Commands run in order on the host that reads the task, before anything is read
    (quiesce an application, take a snapshot); one that fails fails the run
    (`hook_failed`)."""
    after: list[Argv] = []
    """Commands run whenever the `before` commands ran, whatever came of the run (with
    `BACKSTOP_STATE`); one that fails adds a warning."""
    hook_timeout: Duration = timedelta(minutes=10)
    """Each hook must finish within this; else it is killed with its children."""

    @model_validator(mode="after")
    def _something_to_read(self) -> Task:
        if self.source is None and not self.streams:
            raise ValueError("a task needs a source, streams, or both")
        return self


class Schedule(Model):
    """A 5-field cron expression with an optional time zone, or a fixed interval."""

    name: Name
    """The schedule's name."""
    cron: str | None = None
    """A 5-field cron expression (or `every`)."""
    timezone: str | None = None
    """The cron expression's time zone; default the top-level `timezone`."""
    every: Duration | None = None
    """A fixed interval (or `cron`)."""
    catch_up: Duration = timedelta(hours=1)
    """A tick missed while no beat ran is run once if at most this old, else recorded as missed."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and (len(value.split()) != 5 or not croniter.is_valid(value)):
            raise ValueError(
                f"bad cron expression {value!r}: expected 5 fields, e.g. '0 22 * * 1-5'")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule needs exactly one of cron or every")
        if self.every is not None and self.every <= timedelta(0):
            raise ValueError("every must be positive")
        if self.every is not None and self.timezone is not None:
            raise ValueError("timezone applies to cron schedules only")
        return self


class MigrationTask(Model):
    name: Name
    """The migration task's name."""
    target_pool: str
    """The pool a new saveset is copied to after its run succeeded."""
    drive: str | None = None
    """The drive the copy writes through."""


class FollowUp(Model):
    event: str
    """The event to start."""
    when: FollowUpWhen = FollowUpWhen.SUCCESS
    """After which outcome of the occurrence."""


class EventBase(Model):
    name: Name
    """The event's name."""
    schedule: str | None = None
    """The schedule that triggers it; none: ad hoc, follow-up or failover only."""
    priority: int = 0
    """Of equal events (same task) due at one tick, only the highest runs."""
    follow_ups: list[FollowUp] = []
    """Events started when this occurrence settles."""


class BackupEvent(EventBase):
    """Task + level + options + storage settings; may name a failover event."""

    kind: Literal["backup"] = "backup"
    """The event kind."""
    task: str
    """What to back up."""
    level: Level = Level.FULL
    """FULL, DIFF, INC or COPY."""
    enforce_full: bool = False
    """Upgrade DIFF/INC to FULL after a failed FULL, past `full_interval`, or when the base's store
    is unavailable."""
    full_interval: Duration | None = None
    """With `enforce_full`: the longest time between two FULLs."""
    media_pool: str
    """Where the savesets go."""
    drive: str | None = None
    """A drive of the pool's data store."""
    interface: str | None = None
    """The RDS interface a client task's data goes through; default the RDS's first."""
    migration_task: str | None = None
    """Copy each new saveset with this migration task."""
    failover_event: str | None = None
    """The event whose storage settings a failover run uses."""


class VerifyEvent(EventBase):
    """Restore-test the saveset of the triggering occurrence (or the task's newest saveset)."""

    kind: Literal["verify"]
    """The event kind."""
    task: str | None = None
    """Verify this task's newest saveset when not triggered by an occurrence."""


class CommandEvent(EventBase):
    """Run ``argv`` on a control worker, never through a shell."""

    kind: Literal["command"]
    """The event kind."""
    argv: list[str] = Field(min_length=1)
    """The command and its arguments."""
    timeout: Duration = timedelta(hours=1)
    """The command is killed after this long."""


EVENT_KINDS: dict[str, type[EventBase]] = {
    "backup": BackupEvent,
    "verify": VerifyEvent,
    "command": CommandEvent,
}


def _event_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "backup"))
    return str(getattr(value, "kind", "backup"))


Event = Annotated[
    Annotated[BackupEvent, Tag("backup")]
    | Annotated[VerifyEvent, Tag("verify")]
    | Annotated[CommandEvent, Tag("command")],
    Discriminator(_event_kind),
]

# Section name -> entity type, in the order the file is checked and summarized.
SECTIONS: dict[str, type[Model]] = {
    "rds": Rds,
    "data_stores": DataStore,
    "media_pools": MediaPool,
    "drives": Drive,
    "clients": Client,
    "tasks": Task,
    "schedules": Schedule,
    "migration_tasks": MigrationTask,
}


class Config(Model):
    """The whole file, with paths as written; :mod:`backstop.settings` resolves them."""

    state_dir: Path = Path(".backstop")
    """Embedded broker data, logs, the data token; relative to the config file."""
    broker_url: str | None = None
    """Redis/Valkey URL (`redis://`, `rediss://`, `sentinel://`); none: `backstop up` starts an
    embedded one."""
    # With a broker_url of Sentinels (SPEC section 13): the master's name, the Sentinels'
    # own password if they have one, and how long a ledger or catalog write waits for a
    # replica to have it.
    broker_master_name: str | None = None
    """With Sentinels: the master's name."""
    broker_sentinel_password: str | None = None
    """With Sentinels: the Sentinels' own password."""
    broker_wait_ms: int = Field(default=1000, ge=0, le=60_000)
    """Ledger and catalog writes wait this long for a replica."""
    timezone: str = "UTC"
    """The time zone of cron schedules."""
    # Hard time limit of one backup run; the broker's visibility timeout is derived from it.
    backup_time_limit: Duration = timedelta(hours=6)
    """Hard time limit of one backup run."""
    backup_jobs: int | None = Field(default=None, ge=1, le=1024)
    """Processes that read, hash and compress the files of one backup, and write those of one
    restore, on the host that runs it; none: as many as the host has cores."""
    rds: list[Rds] = []
    """Storage nodes."""
    data_stores: list[DataStore] = []
    """Directories or buckets that hold savesets."""
    media_pools: list[MediaPool] = []
    """Groups of media in a data store, with a retention."""
    drives: list[Drive] = []
    """Write channels of data stores."""
    clients: list[Client] = []
    """Hosts whose tasks are read there."""
    tasks: list[Task] = []
    """What to back up."""
    schedules: list[Schedule] = []
    """When events are triggered."""
    migration_tasks: list[MigrationTask] = []
    """Copies of new savesets to another pool."""
    events: list[Event] = []
    """Backup, verify and command events."""
    data_path: DataPath = DataPath()
    """How clients reach the data services."""
    notify: list[NotifyTarget] = []
    """Where messages about occurrences go."""
    # Ended runs queued longer ago than this leave the run ledger (SPEC section 10).
    history: Duration = timedelta(days=90)
    """Ended runs older than this leave the run ledger."""
    encryption: Encryption | None = None
    """Encryption of every task's savesets unless a task says otherwise."""

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _sentinels_need_a_master(self) -> Config:
        if (self.broker_url or "").startswith("sentinel://") and not self.broker_master_name:
            raise ValueError("broker_url names Sentinels: broker_master_name must say which "
                             "master they watch")
        return self

    @field_validator("history")
    @classmethod
    def _positive_history(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("history must be positive, e.g. 90d")
        return value

    def rds_named(self, name: str) -> Rds:
        return next(r for r in self.rds if r.name == name)

    def storage_of(self, pool: str) -> tuple[str, str]:
        """The (data store, RDS) of a media pool."""
        store = next(p.data_store for p in self.media_pools if p.name == pool)
        return store, next(s.rds for s in self.data_stores if s.name == store)

    def task_named(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    def port_of(self, interface: Interface) -> int:
        return interface.port or self.data_path.port

    def interface_for(self, rds: str, name: str | None) -> Interface | None:
        """The interface a run's data goes through: ``name``, else the RDS's first."""
        interfaces = self.rds_named(rds).interfaces
        if name is None:
            return interfaces[0] if interfaces else None
        return next(i for i in interfaces if i.name == name)

    @cached_property
    def events_by_name(self) -> dict[str, BackupEvent | VerifyEvent | CommandEvent]:
        return {e.name: e for e in self.events}

    def event_named(self, name: str) -> BackupEvent | VerifyEvent | CommandEvent:
        return self.events_by_name[name]
