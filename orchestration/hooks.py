"""A task's ``before`` and ``after`` commands, run on the host that reads the task.

Each is an argv, never a shell; it runs in a session of its own, with the run in its
environment (``BACKSTOP_TASK``, ``BACKSTOP_EVENT``, ``BACKSTOP_RUN``, ``BACKSTOP_LEVEL``,
and for ``after`` ``BACKSTOP_STATE``), and is killed with its children when it outlasts the
task's ``hook_timeout``. A ``before`` that fails fails the run (``hook_failed``: no saveset,
no failover); an ``after`` that fails is a warning of the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping

from backstop.config import Task
from backstop.errors import HookFailed

TAIL_BYTES = 400  # of a failed hook's standard error, in its message


def run_hook(argv: list[str], env: Mapping[str, str], timeout_s: float, cwd: str) -> str | None:
    """Run one hook; None when it succeeded, else what went wrong (its exit status and the
    end of its standard error, or that it timed out)."""
    try:
        process = subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return f"{argv[0]} could not be started: {exc.strerror or exc}"
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()  # reaps it and closes its pipe
        return f"{argv[0]} ran longer than {timeout_s:g}s and was killed with its children"
    if process.returncode == 0:
        return None
    tail = stderr[-TAIL_BYTES:].decode(errors="replace").strip()
    return f"{argv[0]} exited with status {process.returncode}" + (f": {tail}" if tail else "")


class Hooks:
    """The hooks of one run of ``task``."""

    def __init__(self, task: Task, env: Mapping[str, str], cwd: str) -> None:
        self.task, self.env, self.cwd = task, dict(env), cwd
        self.ran_before = False

    def before(self, level: str) -> None:
        """Every ``before`` command, in order; HookFailed at the first that fails."""
        self.env["BACKSTOP_LEVEL"] = level
        self.ran_before = True
        for argv in self.task.before:
            problem = run_hook(argv, self.env, self.task.hook_timeout.total_seconds(),
                               self.cwd)
            if problem is not None:
                raise HookFailed(f"before command of task {self.task.name}: {problem}")

    def after(self, state: str) -> list[str]:
        """Every ``after`` command (when the ``before`` ones ran); warnings of those that
        failed."""
        if not self.ran_before:
            return []
        env = {**self.env, "BACKSTOP_STATE": state}
        return [f"after command of task {self.task.name}: {problem}"
                for argv in self.task.after
                if (problem := run_hook(argv, env, self.task.hook_timeout.total_seconds(),
                                        self.cwd)) is not None]
