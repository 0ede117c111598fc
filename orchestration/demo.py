"""The quickstart's demo source: a small tree generated the first time ``backstop up`` starts.

Only for tasks marked ``demo: true`` whose source does not exist yet; an existing directory
is never touched.
"""

from __future__ import annotations

import random
from pathlib import Path

from backstop.settings import Settings

DEMO_DIRS = ("docs", "photos", "reports/2026", "cache")
DEMO_FILES_PER_DIR = 12
# Reproducible content, so two quickstarts back up the same bytes.
DEMO_SEED = 20261124
WORDS = ["backup", "restore", "saveset", "medium", "pool", "drive", "failover", "schedule",
         "level", "full", "inc", "diff"]


def seed_demo_sources(settings: Settings) -> list[Path]:
    """Create each missing demo source; return the ones created."""
    created = []
    for task in settings.config.tasks:
        if not task.demo or task.source is None:
            continue
        source = settings.resolve(task.source)
        if not source.exists():
            write_demo_tree(source)
            created.append(source)
    return created


def write_demo_tree(root: Path) -> None:
    rng = random.Random(DEMO_SEED)
    for directory in DEMO_DIRS:
        (root / directory).mkdir(parents=True, exist_ok=True)
        for i in range(DEMO_FILES_PER_DIR):
            if directory == "photos":
                data = rng.randbytes(rng.randint(8_000, 64_000))  # incompressible
                (root / directory / f"img{i:03}.raw").write_bytes(data)
            else:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 4000)))
                suffix = ".tmp" if directory == "cache" else ".txt"
                (root / directory / f"note{i:03}{suffix}").write_text(text + "\n")
