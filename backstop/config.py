"""The configuration file as plain data (SPEC section 6).

Each section is a list of named entities. Structure and values are checked here, entity by
entity; references between entities are checked in :mod:`backstop.config_refs`, and the
file is read and every problem collected in :mod:`backstop.config_load`.
"""

from __future__ import annotations

import enum
import zoneinfo
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

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

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    address: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)


class Rds(Model):
    """A storage node; workers started with ``--rds NAME`` serve its data stores."""

    name: Name
    interfaces: list[Interface] = []


class ObjectLock(Model):
    mode: Literal["COMPLIANCE", "GOVERNANCE"]
    days: int = Field(ge=1)


class S3Location(Model):
    """An S3 bucket (and a prefix in it) as a data store (SPEC section 14). The keys come
    from the environment variables named here, never from the file."""

    endpoint: str = Field(pattern=r"^https?://")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field(default="", pattern=r"^$|^[A-Za-z0-9_.-][A-Za-z0-9_./-]*/$")
    region: str = "us-east-1"
    access_key_env: str
    secret_key_env: str
    object_lock: ObjectLock | None = None


class DataStore(Model):
    name: Name
    rds: str
    path: Path | None = None
    s3: S3Location | None = None
    capacity: Size | None = None
    reserve: Size = 0
    # `backstop up` and `backstop worker --rds` create the directory and its store marker at
    # start when the directory does not exist. A store that goes away later is offline.
    create: bool = False

    @model_validator(mode="after")
    def _reserve_below_capacity(self) -> DataStore:
        if self.capacity is not None and self.reserve >= self.capacity:
            raise ValueError("reserve must be smaller than capacity")
        if (self.path is None) == (self.s3 is None):
            raise ValueError("a data store is either a directory (path) or a bucket (s3)")
        return self


class Media(Model):
    count: int | None = Field(default=None, ge=1)
    size: Size | None = None

    @model_validator(mode="after")
    def _something_set(self) -> Media:
        if self.count is None and self.size is None:
            raise ValueError("media needs a count, a size or both")
        if self.size is not None and self.size <= 0:
            raise ValueError("media size must be positive")
        return self


class MediaPool(Model):
    name: Name
    data_store: str
    retention: Duration
    media: Media | None = None
    failover_pool: str | None = None


class Drive(Model):
    name: Name
    data_store: str
    channels: int = Field(default=1, ge=1)


class Client(Model):
    """A host whose tasks are read there, by ``backstop worker --client NAME``."""

    name: Name
    # The client's own data token (read and write only its tasks' savesets, never delete);
    # without one, the client worker uses the fleet's data token.
    token_file: Path | None = None


class Tls(Model):
    """The data service speaks HTTPS with ``cert``/``key``; clients verify it against ``ca``."""

    cert: Path
    key: Path
    ca: Path


class DataPath(Model):
    """How clients reach the RDS data services (SPEC section 9)."""

    port: int = Field(default=DEFAULT_DATA_PORT, ge=1, le=65535)
    # default: state_dir/data-token (created mode 0600 by `backstop up`)
    token_file: Path | None = None
    tls: Tls | None = None
    connect_timeout: Duration = timedelta(seconds=10)
    io_timeout: Duration = timedelta(seconds=60)

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
    url: str | None = None
    when: list[NotifyWhen] = Field(min_length=1)

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


class Task(Model):
    """What to back up: a source directory and gitignore-style excludes, read on the task's
    ``client`` (by its client worker), or on the RDS worker when it names none."""

    name: Name
    source: Path
    exclude: list[str] = []
    client: str | None = None
    # Fill a missing source with a small generated tree when `backstop up` starts (quickstart).
    demo: bool = False


class Schedule(Model):
    """A 5-field cron expression with an optional time zone, or a fixed interval."""

    name: Name
    cron: str | None = None
    timezone: str | None = None
    every: Duration | None = None
    catch_up: Duration = timedelta(hours=1)

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
    target_pool: str
    drive: str | None = None


class FollowUp(Model):
    event: str
    when: FollowUpWhen = FollowUpWhen.SUCCESS


class EventBase(Model):
    name: Name
    schedule: str | None = None
    priority: int = 0
    follow_ups: list[FollowUp] = []


class BackupEvent(EventBase):
    """Task + level + options + storage settings; may name a failover event."""

    kind: Literal["backup"] = "backup"
    task: str
    level: Level = Level.FULL
    enforce_full: bool = False
    full_interval: Duration | None = None
    media_pool: str
    drive: str | None = None
    interface: str | None = None
    migration_task: str | None = None
    failover_event: str | None = None


class VerifyEvent(EventBase):
    """Restore-test the saveset of the triggering occurrence (or the task's newest saveset)."""

    kind: Literal["verify"]
    task: str | None = None


class CommandEvent(EventBase):
    """Run ``argv`` on a control worker, never through a shell."""

    kind: Literal["command"]
    argv: list[str] = Field(min_length=1)
    timeout: Duration = timedelta(hours=1)


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
    broker_url: str | None = None
    # With a broker_url of Sentinels (SPEC section 13): the master's name, the Sentinels'
    # own password if they have one, and how long a ledger or catalog write waits for a
    # replica to have it.
    broker_master_name: str | None = None
    broker_sentinel_password: str | None = None
    broker_wait_ms: int = Field(default=1000, ge=0, le=60_000)
    timezone: str = "UTC"
    # Hard time limit of one backup run; the broker's visibility timeout is derived from it.
    backup_time_limit: Duration = timedelta(hours=6)
    rds: list[Rds] = []
    data_stores: list[DataStore] = []
    media_pools: list[MediaPool] = []
    drives: list[Drive] = []
    clients: list[Client] = []
    tasks: list[Task] = []
    schedules: list[Schedule] = []
    migration_tasks: list[MigrationTask] = []
    events: list[Event] = []
    data_path: DataPath = DataPath()
    notify: list[NotifyTarget] = []
    # Ended runs queued longer ago than this leave the run ledger (SPEC section 10).
    history: Duration = timedelta(days=90)

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
