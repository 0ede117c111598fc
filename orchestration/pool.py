"""The pool of a lean client worker: Celery's thread pool, with the time limits it skips.

A client worker runs in one process so that it holds one set of broker connections and one
copy of the code in memory (Celery's prefork pool forks a child per slot, each with its own).
Celery's own thread pool ignores time limits; a backup of a client must still end at
``backup_time_limit``. So, as the prefork pool does with a signal, the soft limit raises
``SoftTimeLimitExceeded`` in the thread running the task (the run ends ``timeout``); the
exception lands as soon as that thread runs Python again, which a backup does between
reads of at most a megabyte, a stream between polls of ``data_path.io_timeout``. A task
still running at the hard limit is past saving: as the prefork pool kills its child, this
pool ends the worker process (its supervisor starts it again, and what it held goes back
on its queue, orchestration/redeliver.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery.concurrency.base import apply_target
from celery.concurrency.thread import ApplyResult  # type: ignore[attr-defined]
from celery.concurrency.thread import TaskPool as CeleryThreadPool

log = logging.getLogger(__name__)

# The exit status of a worker that ended itself at a task's hard time limit (EX_SOFTWARE).
HARD_LIMIT_EXIT = 70


class Limits:
    """The time limits of one task, running in the calling thread until :meth:`done`."""

    def __init__(self, soft_s: float | None, hard_s: float | None,
                 on_timeout: Callable[[bool, float], None] | None) -> None:
        self.thread = threading.get_ident()
        self.lock = threading.Lock()
        self.ended = False
        self.on_timeout = on_timeout
        self.timers = [threading.Timer(seconds, hit, (self, soft, seconds))
                       for seconds, soft in ((soft_s, True), (hard_s, False)) if seconds]
        for timer in self.timers:
            timer.daemon = True
            timer.start()

    def done(self) -> None:
        with self.lock:
            self.ended = True
        for timer in self.timers:
            timer.cancel()


def hit(limits: Limits, soft: bool, seconds: float) -> None:
    """A limit has passed: raise in the task's thread (soft) or end the process (hard)."""
    with limits.lock:
        if limits.ended:
            return
        if limits.on_timeout is not None:
            limits.on_timeout(soft, seconds)  # Celery logs it (and, if hard, fails the task)
        if soft:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(limits.thread), ctypes.py_object(SoftTimeLimitExceeded))
            return
    log.critical("a task ran past its hard time limit of %.0f s and cannot be stopped in "
                 "its thread: ending this worker process", seconds)
    logging.shutdown()
    os._exit(HARD_LIMIT_EXIT)


def limited(limits: tuple[float | None, float | None, Callable[..., None] | None],
            *args: Any) -> Any:
    """Run a task (:func:`celery.concurrency.base.apply_target`) under its limits."""
    running = Limits(*limits)
    try:
        return apply_target(*args)
    finally:
        running.done()


class ThreadPool(CeleryThreadPool):
    """Celery's thread pool, with soft and hard time limits."""

    def on_apply(self, target: Callable[..., Any], args: tuple[Any, ...] | None = None,
                 kwargs: dict[str, Any] | None = None, callback: Callable[..., Any] | None = None,
                 accept_callback: Callable[..., Any] | None = None,
                 timeout: float | None = None, soft_timeout: float | None = None,
                 timeout_callback: Callable[[bool, float], None] | None = None,
                 **_: Any) -> ApplyResult:
        future = self.executor.submit(  # type: ignore[attr-defined]
            limited, (soft_timeout, timeout, timeout_callback),
            target, args, kwargs, callback, accept_callback)
        return ApplyResult(future)
