"""A bench's scratch directory: made afresh, its ``out`` on a tmpfs where this machine lets
the bench mount one (as root), so that stores measure the code and not the disk."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch(work: Path, out_size: str = "2g") -> Iterator[Path]:
    """``work`` emptied, with ``work/out`` a tmpfs of ``out_size`` (a plain directory where
    mounting is not allowed); unmounted and removed afterwards."""
    subprocess.run(["umount", str(work / "out")], capture_output=True, check=False)
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={out_size}", "tmpfs", str(work / "out")],
                   capture_output=True, check=False)
    try:
        yield work
    finally:
        subprocess.run(["umount", str(work / "out")], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
