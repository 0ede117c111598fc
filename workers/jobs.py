"""The engine's processes: the per-file work of one backup or restore shared out to
``jobs`` worker processes, started once for the run.

Python runs one thread at a time, and a backup's or restore's per-file work (open, read,
hash, tar header, write, owner, mode, times) is Python: threads cannot spread it over
cores, processes can. The processes are forked, so that what the run already holds (its
stores, its key, the entries it restores) is theirs without being serialized; each piece
of work and its result (a slice of files, a few frames) is. A forked process dies with
the one that started it (``PR_SET_PDEATHSIG``) and keeps none of its signal handlers; one
that dies fails the run with :class:`ProcessDied`.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from backstop.errors import MessageError
from backstop.workers.archive import FRAME_BYTES

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
# What a forked process inherits of its run (see ``Processes``), under "state".
_handed: dict[str, Any] = {}


class ProcessDied(MessageError):
    """A process of the engine ended before its work was done (killed, out of memory)."""


def default_jobs() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


@dataclass(frozen=True)
class Jobs:
    """How a backup or restore shares its work out: ``processes`` (one: all of it in the
    run's own process, on one core); slices of ``slice_bytes`` of tar members a backup
    hands to a process at a time; and from what size a run starts processes at all (below
    it, starting them costs more than they save)."""

    processes: int
    slice_bytes: int = 2 * FRAME_BYTES
    backup_from_bytes: int = 4 * FRAME_BYTES
    restore_from_bytes: int = 4 * FRAME_BYTES
    restore_from_files: int = 2_000
    # paths of a manifest a restore holds in memory at a time: a bigger one is read in
    # chunks of this many, so that memory stays flat however many paths it has
    restore_chunk: int = 50_000

    @classmethod
    def of(cls, configured: int | None) -> Jobs:
        """``backup_jobs`` as configured (none: a process per core)."""
        return cls(configured or default_jobs())


def state() -> Any:
    """In a forked process, what its run handed to it."""
    return _handed["state"]


def _adopt(handed: Any) -> None:
    """A forked process's first step: its run's state; the parent's signal handlers gone
    (a worker's warm-shutdown handler must not run here); death with the parent."""
    _handed["state"] = handed
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the parent, which ends the run
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the line above: nobody to work for
        os._exit(1)


class Processes:
    """``jobs`` forked processes for one run of ``what`` (a backup, a restore): each holds
    ``handed`` (see ``state``); ``submit`` a module-level function and picklable arguments,
    take its ``result`` in the order that suits the run. Leaving the ``with`` block ends
    the processes, and cancels the work not started."""

    def __init__(self, jobs: int, handed: Any, what: str) -> None:
        self.what = what
        self.executor = ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("fork"),
            initializer=_adopt, initargs=(handed,))
        # Started now: a Celery pool process is "daemonic" to multiprocessing, which then
        # refuses it children, lest they outlive it; these die with it (PR_SET_PDEATHSIG).
        config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
        daemonic = config.pop("daemon", None)
        try:
            self.result(self.executor.submit(os.getpid))
        except BaseException:
            self.executor.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            if daemonic is not None:
                config["daemon"] = daemonic

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, work: Callable[..., T], *args: Any) -> Future[T]:
        """ProcessDied if one of the processes has died."""
        try:
            return self.executor.submit(work, *args)
        except BrokenProcessPool:
            raise self.died() from None

    def result(self, future: Future[T]) -> T:
        """What the work returned, or raised; ProcessDied if its process died."""
        try:
            return future.result()
        except BrokenProcessPool:
            raise self.died() from None

    def died(self) -> ProcessDied:
        return ProcessDied(f"a process of this {self.what} ended before its work was done "
                           "(killed, or out of memory); nothing of it was kept")
