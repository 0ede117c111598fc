"""The age test vectors of C2SP's CCTV, from their npm package ``cctv-age`` (fetched with
the npm client on first use; the tests that need them skip where npm cannot fetch them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "cctv-age@0.2.0"
DUMP = ("const m = require(process.argv[1]); const out = {};"
        "for (const k of Object.keys(m)) out[k] = Buffer.from(m[k]).toString('base64');"
        "console.log(JSON.stringify(out));")


@dataclass(frozen=True)
class Vector:
    name: str
    expect: str
    identities: tuple[str, ...]
    payload_sha256: str | None
    armored: bool
    file: bytes


def parse(name: str, raw: bytes) -> Vector:
    head, _, body = raw.partition(b"\n\n")
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return Vector(name, fields["expect"][0], tuple(fields.get("identity", [])),
                  (fields.get("payload") or [None])[0], fields.get("armored") == ["yes"], body)


def load_vectors(cache: Path) -> list[Vector]:
    """Every vector of the package, unpacked into ``cache`` once."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed to fetch the age test vectors (cctv-age)")
    dump = cache / "vectors.json"
    if not dump.exists():
        cache.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=cache, text=True,
                                capture_output=True, timeout=120, check=False)
        if packed.returncode != 0:
            pytest.skip(f"npm could not fetch {PACKAGE}: {packed.stderr.strip()[-300:]}")
        with tarfile.open(cache / packed.stdout.strip().splitlines()[-1]) as archive:
            archive.extractall(cache, filter="data")
        found = subprocess.run([node, "-e", DUMP, str(cache / "package" / "index.js")],
                               capture_output=True, text=True, timeout=60, check=True)
        dump.write_text(found.stdout)
    import base64

    return [parse(name, base64.b64decode(data))
            for name, data in json.loads(dump.read_text()).items()]
