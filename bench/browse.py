"""``ls`` of one directory of a 1,000,000-file saveset, from its manifest alone.

    .venv/bin/python bench/browse.py                 # 1,000,000 files in 1,000 directories
    .venv/bin/python bench/browse.py --files 200000

Builds the manifest of a saveset of --files files (1,000 to a directory), encoded as the
engine stores it, and times, median of --repeat, reading the part under one directory
(what `backstop ls SAVESET DIR` reads) against decoding the whole manifest (the baseline:
what reading it naively costs). Target: one directory in <= 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backstop.model import DIR, FILE, Entry, Manifest  # noqa: E402
from backstop.workers import manifest as manifests  # noqa: E402


def build(files: int) -> bytes:
    found = Manifest("bench")
    for d in range(max(1, files // 1000)):
        found.entries[f"d{d:04}"] = Entry(f"d{d:04}", DIR, 0, 1, d, 0o755, uid=0, gid=0)
    for i in range(files):
        path = f"d{i // 1000:04}/f{i:07}.txt"
        found.entries[path] = Entry(path, FILE, 100 + i % 5000, 1_700_000_000_000_000_000 + i,
                                    i, 0o644, "ab" * 32, "bench", "", 1000, 1000,
                                    1_700_000_000_000_000_000 + i, "backup", "backup")
    return manifests.encode(found)


def median_s(repeat: int, work: object) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"building a manifest of {args.files:,} files ...", file=sys.stderr)
    data = build(args.files)
    middle = f"d{args.files // 2000:04}"
    one = median_s(args.repeat, lambda: manifests.decode(data, "bench", middle))
    every = median_s(args.repeat, lambda: manifests.decode(data, "bench"))
    print(f"\nmanifest of {args.files:,} files: {len(data) / 1e6:.1f} MB stored; "
          f"median of {args.repeat}")
    print(f"{'decode it all (baseline)':28} {every:7.2f} s")
    print(f"{'ls of one directory':28} {one:7.2f} s   {every / one:5.1f}x faster   "
          f"target <= 1 s ({'met' if one <= 1 else 'NOT met'})")


if __name__ == "__main__":
    main()
