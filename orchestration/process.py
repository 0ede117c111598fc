"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
# Looked up once here, so that the forked child only makes one plain C call before exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the parent dies.

    This is what keeps a SIGKILLed ``backstop up`` from leaving workers, beat or the broker
    running; a clean stop does not rely on it.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (Ctrl-C on the terminal reaches only us)."""
    return subprocess.Popen(
        list(argv), env=dict(env) if env is not None else None, cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
        # The processes that spawn (the supervisor, the test broker fixture) start no
        # threads before they do, which is what makes preexec_fn safe here.
        start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
    )


def stop_group(process: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM the child's whole process group, SIGKILL what is left after ``grace_s``."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    # Pool processes of a celery worker share the group; none may stay behind.
    _signal_group(process.pid, signal.SIGKILL)
    return process.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
