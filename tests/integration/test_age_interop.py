"""Backstop's age files against the reference `age` tool (Debian's `age`), both ways."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from backstop.workers.age import (
    CHUNK,
    Identity,
    Recipient,
    SeekableReader,
    Writer,
    decrypt_stream,
    read_identities,
)
from tests.system_tools import require


def test_age_decrypts_what_backstop_wrote(tmp_path: Path) -> None:
    age = require("age", "age")
    identity = Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(identity.encoded() + "\n")
    key.chmod(0o600)
    plain = os.urandom(3 * CHUNK + 123)
    with (tmp_path / "sealed.age").open("wb") as out, Writer(
            out, [identity.recipient, Identity.generate().recipient]) as writer:
        writer.write(plain)
    done = subprocess.run([age, "-d", "-i", str(key), str(tmp_path / "sealed.age")],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == plain


def test_backstop_reads_what_age_encrypted_with_an_age_keygen_key(tmp_path: Path) -> None:
    age = require("age", "age")
    keygen = require("age-keygen", "age")
    key = tmp_path / "key.txt"
    subprocess.run([keygen, "-o", str(key)], capture_output=True, check=True, timeout=30)
    [identity] = read_identities(key)  # age-keygen writes it mode 0600, with comments
    public = subprocess.run([keygen, "-y", str(key)], capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    assert str(identity.recipient) == public and Recipient.parse(public) == identity.recipient
    plain = os.urandom(2 * CHUNK)  # ends on a full chunk: the last one is full
    sealed = subprocess.run([age, "-r", public], input=plain, capture_output=True,
                            check=True, timeout=60).stdout
    assert b"".join(decrypt_stream(io.BytesIO(sealed), [identity])) == plain
    found = SeekableReader(lambda at, size: sealed[at:at + size], len(sealed), [identity])
    assert found.read(CHUNK - 5, 10) == plain[CHUNK - 5:CHUNK + 5]
