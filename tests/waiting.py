"""Waiting for a condition with a generous limit (a hang fails the test, slowness does not)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, limit_s: float = 30.0,
             every_s: float = 0.1) -> T:
    deadline = time.monotonic() + limit_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {limit_s:.0f}s")
        time.sleep(every_s)
