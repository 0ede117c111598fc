"""The age format: round trips, random access, tampering, keys, and the CCTV test vectors."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from backstop.workers.age import (
    CHUNK,
    HeaderError,
    HeaderTampered,
    Identity,
    KeyProblem,
    NoMatch,
    PayloadError,
    Recipient,
    SeekableReader,
    Writer,
    decrypt_stream,
    read_identities,
    write_identity,
)
from tests.age_vectors import Vector, load_vectors

ME, OTHER = Identity.generate(), Identity.generate()


def seal(plain: bytes, *recipients: Recipient) -> bytes:
    out = io.BytesIO()
    with Writer(out, recipients or (ME.recipient,)) as writer:
        for at in range(0, len(plain), 10_007):  # writes of any size
            writer.write(plain[at:at + 10_007])
    return out.getvalue()


def reader(sealed: bytes, identity: Identity = ME) -> SeekableReader:
    return SeekableReader(lambda at, size: sealed[at:at + size], len(sealed), [identity])


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_what_is_written_reads_back_whole_and_in_any_range(size: int) -> None:
    plain = os.urandom(size)
    sealed = seal(plain)
    assert b"".join(decrypt_stream(io.BytesIO(sealed), [ME])) == plain
    found = reader(sealed)
    assert found.size == size
    for start, length in [(0, size), (1, 10), (CHUNK - 3, 7), (max(0, size - 1), 5),
                          (2 * CHUNK, CHUNK)]:
        assert found.read(start, length) == plain[start:start + length]


def test_any_recipient_opens_it_and_nobody_else() -> None:
    sealed = seal(b"payroll", ME.recipient, OTHER.recipient)
    assert reader(sealed, OTHER).read(0, 100) == b"payroll"
    with pytest.raises(NoMatch):
        reader(sealed, Identity.generate())


def test_a_changed_byte_anywhere_is_caught_and_nothing_of_its_chunk_released() -> None:
    plain = os.urandom(3 * CHUNK)
    sealed = seal(plain)
    header = sealed.index(b"\n---") + 1
    # a flipped byte in the second chunk (number 1): the others still read, it is named
    changed = bytearray(sealed)
    changed[-(CHUNK + 100)] ^= 1
    found = reader(bytes(changed))
    assert found.read(0, CHUNK) == plain[:CHUNK]
    assert found.read(2 * CHUNK, 10) == plain[2 * CHUNK:2 * CHUNK + 10]
    with pytest.raises(PayloadError, match="chunk 1"):
        found.read(CHUNK, 10)
    # a flipped byte of the header's MAC
    changed = bytearray(sealed)
    changed[sealed.index(b"\n", header) - 2] ^= 1
    with pytest.raises((HeaderTampered, HeaderError)):
        reader(bytes(changed))


def test_a_cut_file_is_caught_front_to_back_and_by_range() -> None:
    sealed = seal(os.urandom(2 * CHUNK + 10))
    for cut in (len(sealed) - 1, len(sealed) - 30, len(sealed) - CHUNK):
        with pytest.raises(PayloadError):
            b"".join(decrypt_stream(io.BytesIO(sealed[:cut]), [ME]))
        with pytest.raises(PayloadError):
            found = reader(sealed[:cut])
            found.read(0, found.size)


def test_keys_round_trip_and_bad_ones_are_named() -> None:
    assert Recipient.parse(str(ME.recipient)) == ME.recipient
    assert Identity.parse(ME.encoded()) == ME
    assert str(ME.recipient).startswith("age1") and ME.encoded().startswith("AGE-SECRET-KEY-1")
    assert ME.encoded() not in repr(ME)
    with pytest.raises(KeyProblem):
        Recipient.parse("age1notakey")
    with pytest.raises(KeyProblem):
        Identity.parse(ME.encoded().lower())


def test_an_identity_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    write_identity(path, ME)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert read_identities(path) == [ME]
    path.chmod(0o644)
    with pytest.raises(KeyProblem, match=r"readable by others.*chmod 600"):
        read_identities(path)
    with pytest.raises(FileExistsError):
        write_identity(path, OTHER)


EXPECTED = {"no match": NoMatch, "HMAC failure": HeaderTampered,
            "header failure": HeaderError, "payload failure": PayloadError}


def x25519_vectors(cache: Path) -> list[Vector]:
    return [v for v in load_vectors(cache)
            if not v.armored and not v.name.startswith(("scrypt", "hybrid", "armor"))]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> list[Vector]:
    return x25519_vectors(tmp_path_factory.mktemp("cctv"))


def test_the_cctv_age_vectors_decrypt_or_fail_as_they_say(vectors: list[Vector]) -> None:
    assert len(vectors) > 50
    wrong = []
    for vector in vectors:
        identities = [Identity.parse(i) for i in vector.identities]
        released = hashlib.sha256()
        try:
            for chunk in decrypt_stream(io.BytesIO(vector.file), identities):
                released.update(chunk)
            outcome = "success"
        except (HeaderError, NoMatch, HeaderTampered, PayloadError) as exc:
            outcome = next(k for k, v in EXPECTED.items() if isinstance(exc, v))
        if outcome != vector.expect or (
                vector.payload_sha256 and released.hexdigest() != vector.payload_sha256):
            wrong.append((vector.name, vector.expect, outcome))
    assert wrong == []
