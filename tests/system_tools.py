"""Debian tools the tests check with for real (promtool, chromium), installed on first use.

As root with apt-get (CI, a fresh machine) a missing tool is installed; elsewhere the tests
that need it skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

_lock = threading.Lock()
_apt_updated: list[bool] = []  # once per test session


def require(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian ``package`` if it is missing."""
    with _lock:
        found = shutil.which(binary)
        if found:
            return found
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{binary} is not installed (Debian package {package})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not _apt_updated:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                           check=False)
            _apt_updated.append(True)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                               package], env=env, capture_output=True, text=True, check=False)
        found = shutil.which(binary)
        if found is None:
            pytest.skip(f"{binary} could not be installed: {done.stderr.strip()[-300:]}")
        return found
