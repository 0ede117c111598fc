"""Manifests: every kind of entry round-trips, format 1 still reads, and reading the part
under one path finds exactly that part."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.errors import CorruptSaveset
from backstop.model import Entry, Manifest
from backstop.workers import manifest as manifests


def sample() -> Manifest:
    found = Manifest("s1")
    for path, kind in [("d1", "d"), ("d1/a", "f"), ("d10", "d"), ("d10/b", "f"),
                       ("d1/sub", "d"), ("d1/sub/c", "f"), ("d1x", "f"), ("caf\u00e9", "d"),
                       ("caf\u00e9/\udcff\nx", "f"), ("d1/link", "h"), ("pipe", "p")]:
        found.entries[path] = Entry(path, kind, 3, 1, 2, 0o644, "ab", "s1",
                                    "d1/a" if kind == "h" else "", 1234, 5678, 9, "u", "g",
                                    (("user.x", b"\x00\xff"),), 0)
    return found


def test_every_field_round_trips() -> None:
    original = sample()
    assert manifests.decode(manifests.encode(original), "s1").entries == original.entries


@pytest.mark.parametrize(("prefix", "expected"), [
    ("d1", ["d1", "d1/a", "d1/link", "d1/sub", "d1/sub/c"]),
    ("d1/sub", ["d1/sub", "d1/sub/c"]),
    ("d10", ["d10", "d10/b"]),
    ("caf\u00e9", ["caf\u00e9", "caf\u00e9/\udcff\nx"]),
    ("nothing", []),
])
def test_the_part_under_a_path_is_that_part_and_nothing_else(prefix: str,
                                                             expected: list[str]) -> None:
    encoded = manifests.encode(sample())
    assert sorted(manifests.decode(encoded, "s1", prefix).entries) == expected


def test_a_manifest_of_format_1_still_reads() -> None:
    import io
    import json

    import zstandard
    rows = [{"format": "backstop-manifest/1", "saveset": "old", "digest": "blake3"},
            ["f", "a.txt", 5, 1, 2, 420, "ab", "old", ""], ["x", "gone.txt"]]
    data = zstandard.ZstdCompressor().compress(
        b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    found = manifests.decode(io.BytesIO(data).read(), "old")
    assert (found.entries["a.txt"].uid, found.entries["a.txt"].ctime_ns) == (-1, 0)
    assert found.deleted == ["gone.txt"]


@given(st.binary(max_size=200))
def test_garbage_is_a_corrupt_saveset_not_a_crash(junk: bytes) -> None:
    with pytest.raises(CorruptSaveset):
        manifests.decode(junk, "s1", "d1")
