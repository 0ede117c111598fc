"""One backup run on its RDS worker: claim it, hold a drive channel, run the engine, end it.

The run is claimed in the ledger with a lease the running process renews; a message that
arrives for a run that has ended (late, or delivered twice) does nothing, and one that
arrives while another live process runs it does nothing either. A run waiting for a drive
channel stays queued: the task comes back later, it does not fail.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import redis
from celery.exceptions import SoftTimeLimitExceeded

from backstop.config import Config
from backstop.constants import DRIVE_CHANNELS_KEY, RUN_LEASE_RENEW_S, RUN_LEASE_S
from backstop.errors import HookFailed, SourceError, StorageUnavailable
from backstop.orchestration.broker import BROKER_ERRORS
from backstop.orchestration.control import saveset_id_for
from backstop.orchestration.hooks import Hooks
from backstop.orchestration.ledger import Ledger
from backstop.runs import ACTIVE, ErrorKind, Progress, Run, RunEnd, RunSpec, RunState, utc_now
from backstop.workers.engine import BackupRequest, Engine
from backstop.workers.levels import LevelDecision

log = logging.getLogger(__name__)

# A run waiting for a drive channel asks again after this many seconds.
CHANNEL_WAIT_S = 2.0

# Take a channel: drop holders whose lease ran out, then join if there is room.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""


class Channels:
    """Drive channels, fleet-wide: a sorted set of the runs writing through each drive."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.client = client
        self.config = config
        self._acquire = client.register_script(_ACQUIRE)

    def acquire(self, spec: RunSpec, run_id: str) -> tuple[bool, str | None]:
        """(True, drive) when the run may write (drive None: the store has no drives)."""
        candidates = [d for d in self.config.drives if d.data_store == spec.data_store
                      and (spec.drive is None or d.name == spec.drive)]
        if not candidates:
            return True, None
        now = time.time()
        for drive in candidates:
            if self._acquire(keys=[DRIVE_CHANNELS_KEY.format(drive=drive.name)],
                             args=[run_id, now, now + RUN_LEASE_S, drive.channels]):
                return True, drive.name
        return False, None

    def renew(self, drive: str, run_id: str) -> None:
        self.client.zadd(DRIVE_CHANNELS_KEY.format(drive=drive),
                         {run_id: time.time() + RUN_LEASE_S}, xx=True)

    def release(self, drive: str | None, run_id: str) -> None:
        if drive is not None:
            self.client.zrem(DRIVE_CHANNELS_KEY.format(drive=drive), run_id)


@contextmanager
def lease_kept(ledger: Ledger, channels: Channels, run_id: str, holder: str,
               drive: str | None) -> Iterator[None]:
    """Renew the run's lease (and its channel) from a thread while the body runs."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RUN_LEASE_RENEW_S):
            try:
                ledger.renew(run_id, holder, int(RUN_LEASE_S * 1000))
                if drive is not None:
                    channels.renew(drive, run_id)
            except redis.RedisError as exc:
                log.warning("run %s: lease not renewed: %s", run_id, exc)

    thread = threading.Thread(target=renew, name=f"lease-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class Outcome:
    """What a delivery of a run's message did: ``end`` when it ended the run (then the
    control plane must hear of it); else the state the run was found in."""

    state: str
    end: RunEnd | None = None
    # The run cannot start yet: no drive channel is free, or the lease of a process that
    # ran it before (and may have died) has not run out yet. Ask again later.
    come_back_in_s: float | None = None


class ProgressReport:
    """Reports files/bytes done to the ledger (and Flower), at most once a second."""

    def __init__(self, ledger: Ledger, run_id: str, report: Callable[[Progress], None]) -> None:
        self.ledger, self.run_id, self.report = ledger, run_id, report
        self.last = 0.0

    def __call__(self, files: int, done: int, total_files: int, total_bytes: int) -> None:
        now = time.monotonic()
        if now - self.last < 1.0 and files < total_files:
            return
        self.last = now
        progress = Progress(files=files, bytes=done, files_total=total_files,
                            bytes_total=total_bytes)
        try:
            self.ledger.update(self.run_id, progress=progress)
            self.report(progress)
        except BROKER_ERRORS as exc:  # progress is for the eye: a promotion must not end a run
            log.warning("run %s: progress not reported: %s", self.run_id, exc)


def run_backup(engine_for: Callable[[Run], Engine], ledger: Ledger, channels: Channels,
               run_id: str, holder: str, report: Callable[[Progress], None]) -> Outcome:
    run = ledger.run(run_id)
    if run is None or run.state not in ACTIVE:
        return Outcome(run.state if run else "missing")
    spec = run.spec
    may_write, drive = channels.acquire(spec, run_id)
    if not may_write:  # waiting, not forgotten: the watchdog need not send it again
        ledger.update(run_id, sent_at=utc_now())
        return Outcome(RunState.QUEUED, come_back_in_s=CHANNEL_WAIT_S)
    claim = ledger.claim(run_id, holder, int(RUN_LEASE_S * 1000))
    if claim.outcome == "busy":  # the channel entry is the run's: its live holder keeps it
        return Outcome(RunState.RUNNING, come_back_in_s=RUN_LEASE_S)
    if not claim.ok:
        channels.release(drive, run_id)
        return Outcome(claim.outcome)
    if drive is not None and spec.drive is None:
        ledger.update(run_id, drive=drive)
    try:
        with lease_kept(ledger, channels, run_id, holder, drive):
            end = (drilled(run) if run.drill_reason is not None else
                   _with_hooks(engine_for(run), run, ledger,
                               ProgressReport(ledger, run_id, report)))
            ended = ledger.finish(run_id, end, holder) == "done"
    finally:
        channels.release(drive, run_id)
    return Outcome(end.state, end if ended else None)


def _with_hooks(engine: Engine, run: Run, ledger: Ledger, progress: ProgressReport) -> RunEnd:
    """The backup, with the task's ``before`` commands once its level is decided (before
    anything is read) and its ``after`` commands whenever those ran."""
    spec = run.spec
    task = engine.task(spec.task)
    hooks = Hooks(task, {"BACKSTOP_TASK": task.name, "BACKSTOP_EVENT": run.event,
                         "BACKSTOP_RUN": run.run_id}, str(engine.settings.base_dir))

    def decided(decision: LevelDecision) -> None:
        ledger.update(run.run_id, effective_level=decision.effective)
        hooks.before(decision.effective.value)

    end = _back_up(engine, spec, run.run_id, progress, decided)
    warnings = hooks.after(end.state.value)
    return replace(end, warnings=(*(end.warnings or ()), *warnings)) if warnings else end


def drilled(run: Run) -> RunEnd:
    """A drill's first run: its storage taken as unavailable for the drill's reason, before
    anything is written, so that the real failover path runs (SPEC section 10)."""
    assert run.drill_reason is not None
    return RunEnd.unavailable(run.drill_reason, f"drill: data store {run.data_store} taken "
                              f"as {run.drill_reason}; nothing was written")


def _back_up(engine: Engine, spec: RunSpec, run_id: str, progress: ProgressReport,
             decided: Callable[[LevelDecision], None]) -> RunEnd:
    request = BackupRequest(task=spec.task, level=spec.level, media_pool=spec.media_pool,
                            enforce_full=spec.enforce_full, full_interval=spec.full_interval,
                            run_id=run_id, saveset_id=saveset_id_for(spec.task, run_id))
    try:
        result = engine.backup(request, progress=progress, decided=decided)
    except StorageUnavailable as exc:
        return RunEnd.unavailable(exc.reason, exc.message)
    except SourceError as exc:
        return RunEnd.failed(ErrorKind.SOURCE_ERROR, str(exc))
    except HookFailed as exc:  # nothing was read: no saveset, no failover
        return RunEnd.failed(ErrorKind.HOOK_FAILED, str(exc))
    except SoftTimeLimitExceeded:
        return RunEnd.failed(ErrorKind.TIMEOUT, "the run exceeded backup_time_limit")
    except Exception as exc:
        log.exception("run %s failed", run_id)
        return RunEnd.failed(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")
    return RunEnd.succeeded(result.saveset, pid=os.getpid(), warnings=result.warnings)
