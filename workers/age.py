"""The age file format (age-encryption.org/v1) with X25519 recipients, seekable.

A saveset's archive and manifest are age files, so that ``age -d -i KEY FILE`` reads them
without Backstop. The cryptography is PyCA ``cryptography`` (X25519, HKDF-SHA-256,
HMAC-SHA-256, ChaCha20-Poly1305); this module only lays out the format:

- a header: the version line, one ``X25519`` stanza per recipient (an ephemeral share and
  the 16-byte file key wrapped for that recipient), and an HMAC of the header under a key
  derived from the file key;
- a 16-byte nonce, then the payload in chunks of 64 KiB, each sealed with ChaCha20-Poly1305
  under a key derived from the file key and the nonce, the chunk's number (and whether it
  is the last) as the AEAD nonce.

Every chunk is sealed on its own, so any range of the plaintext is read by decrypting only
the chunks that hold it (:class:`SeekableReader`): a restore of one file reads one zstd
frame's chunks, not the archive. No plaintext is ever released before its chunk's tag was
checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import bech32
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from backstop.errors import KeyUnusable, MessageError

VERSION_LINE = b"age-encryption.org/v1\n"
X25519_LABEL = b"age-encryption.org/v1/X25519"
CHUNK = 64 << 10  # plaintext bytes of one payload chunk
TAG = 16
SEALED = CHUNK + TAG  # ciphertext bytes of one full chunk
NONCE = 16  # the payload nonce after the header
FILE_KEY = 16
RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
COLUMNS = 64  # base64 characters of a full stanza body line


class AgeError(MessageError):
    """An age file that cannot be read: the message says why."""

    @property
    def detail(self) -> str:
        return self.message


class HeaderError(AgeError):
    """The header does not parse."""


class NoMatch(AgeError, KeyUnusable):
    """No identity opens any recipient stanza of the file."""


class HeaderTampered(AgeError):
    """A file key was unwrapped but the header's HMAC does not match."""


class PayloadError(AgeError):
    """A payload chunk does not authenticate, or the payload is cut short or too long."""


class KeyProblem(AgeError, KeyUnusable):
    """A recipient, identity or identity file that is not valid (or not safe to use)."""


# -- keys --------------------------------------------------------------------------------


def _bech32_decode(text: str, hrp: str) -> bytes:
    found_hrp, data = bech32.bech32_decode(text)
    if found_hrp is None or data is None or found_hrp != hrp:
        raise KeyProblem(f"not an age {'recipient' if hrp == RECIPIENT_HRP else 'identity'}: "
                        f"{text[:12]}…")
    raw = bech32.convertbits(data, 5, 8, False)
    if raw is None or len(raw) != 32:
        raise KeyProblem(f"not a 32-byte key: {text[:12]}…")
    return bytes(raw)


def _bech32_encode(hrp: str, key: bytes) -> str:
    data = bech32.convertbits(list(key), 8, 5, True)
    assert data is not None
    return str(bech32.bech32_encode(hrp, data))


@dataclass(frozen=True)
class Recipient:
    """An X25519 public key, ``age1…``."""

    key: bytes

    @classmethod
    def parse(cls, text: str) -> Recipient:
        if text != text.lower():
            raise KeyProblem(f"an age recipient is lower case: {text[:12]}…")
        return cls(_bech32_decode(text, RECIPIENT_HRP))

    def __str__(self) -> str:
        return _bech32_encode(RECIPIENT_HRP, self.key)


@dataclass(frozen=True)
class Identity:
    """An X25519 private key, ``AGE-SECRET-KEY-1…``; never printed (``repr`` hides it)."""

    secret: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        if text != text.upper():
            raise KeyProblem("an age identity is upper case: AGE-SECRET-KEY-1…")
        return cls(_bech32_decode(text.lower(), IDENTITY_HRP))

    @classmethod
    def generate(cls) -> Identity:
        private = X25519PrivateKey.generate()
        return cls(private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    def encoded(self) -> str:
        return _bech32_encode(IDENTITY_HRP, self.secret).upper()

    @property
    def recipient(self) -> Recipient:
        public = X25519PrivateKey.from_private_bytes(self.secret).public_key()
        return Recipient(public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def __repr__(self) -> str:
        return f"Identity({self.recipient})"


def read_identities(path: Path) -> list[Identity]:
    """The identities of an age identity file (``#`` comments and blank lines allowed).
    A file that group or others may read is refused, as ssh refuses such a key."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise KeyProblem(f"identity file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyProblem(f"identity file {path} is readable by others (mode "
                        f"{stat.S_IMODE(mode):04o}); chmod 600 {path}")
    found = [Identity.parse(line.strip()) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not found:
        raise KeyProblem(f"identity file {path} holds no identity")
    return found


def write_identity(path: Path, identity: Identity) -> None:
    """A new identity file, mode 0600 from its creation; never over an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"# public key: {identity.recipient}\n{identity.encoded()}\n")


# -- header ------------------------------------------------------------------------------


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(SHA256(), 32, salt, info).derive(key)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    """Canonical unpadded standard base64, or HeaderError."""
    if not re.fullmatch(rb"[A-Za-z0-9+/]*", text) or len(text) % 4 == 1:
        raise HeaderError("bad base64 in the header")
    data = base64.b64decode(text + b"=" * (-len(text) % 4))
    if _b64(data) != text:
        raise HeaderError("non-canonical base64 in the header")
    return data


@dataclass(frozen=True)
class Stanza:
    kind: bytes
    args: tuple[bytes, ...]
    body: bytes

    def encode(self) -> bytes:
        text = _b64(self.body)
        lines = [text[i:i + COLUMNS] for i in range(0, len(text), COLUMNS)]
        if not lines or len(lines[-1]) == COLUMNS:
            lines.append(b"")
        return b"-> " + b" ".join((self.kind, *self.args)) + b"\n" + b"\n".join(lines) + b"\n"


def wrap(file_key: bytes, recipient: Recipient) -> Stanza:
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient.key))
    key = _hkdf(shared, share + recipient.key, X25519_LABEL)
    return Stanza(b"X25519", (_b64(share),),
                  ChaCha20Poly1305(key).encrypt(bytes(12), file_key, None))


def unwrap(stanza: Stanza, identity: Identity) -> bytes | None:
    """The file key, if ``stanza`` is an X25519 stanza for ``identity``; else None."""
    if stanza.kind != b"X25519":
        return None
    if len(stanza.args) != 1:
        raise HeaderError("an X25519 stanza has one argument")
    share = _unb64(stanza.args[0])
    if len(share) != 32 or len(stanza.body) != FILE_KEY + TAG:
        raise HeaderError("malformed X25519 stanza")
    private = X25519PrivateKey.from_private_bytes(identity.secret)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(share))
    except ValueError:  # an all-zero shared secret (a low-order share)
        raise HeaderError("X25519 share of low order") from None
    key = _hkdf(shared, share + identity.recipient.key, X25519_LABEL)
    try:
        return ChaCha20Poly1305(key).decrypt(bytes(12), stanza.body, None)
    except InvalidTag:
        return None


def header_for(file_key: bytes, recipients: Iterable[Recipient]) -> bytes:
    text = VERSION_LINE + b"".join(wrap(file_key, r).encode() for r in recipients) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), text, hashlib.sha256).digest()
    return text + b" " + _b64(mac) + b"\n"


@dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    signed: bytes  # the bytes the MAC covers: up to and including "---"
    length: int  # bytes of the header in the file, through its final newline

    def file_key(self, identities: Iterable[Identity]) -> bytes:
        """The file key, checked against the header's MAC; NoMatch or HeaderTampered."""
        for identity in identities:
            for stanza in self.stanzas:
                key = unwrap(stanza, identity)
                if key is None:
                    continue
                expected = hmac.new(_hkdf(key, b"", b"header"), self.signed,
                                    hashlib.sha256).digest()
                if not hmac.compare_digest(expected, self.mac):
                    raise HeaderTampered("the header's MAC does not match: the file was "
                                         "changed")
                return key
        raise NoMatch("no identity opens it")

    @property
    def recipients_stanzas(self) -> int:
        return len(self.stanzas)


def _line(data: bytes, at: int) -> tuple[bytes, int]:
    end = data.find(b"\n", at)
    if end < 0:
        raise HeaderError("the header is cut short")
    return data[at:end], end + 1


def parse_header(data: bytes) -> Header:
    """The header at the start of ``data`` (which must hold all of it)."""
    if not data.startswith(VERSION_LINE):
        raise HeaderError("not an age file (age-encryption.org/v1)")
    at, stanzas = len(VERSION_LINE), list[Stanza]()
    while True:
        line, after = _line(data, at)
        if line.startswith(b"---"):
            if not line.startswith(b"--- "):
                raise HeaderError("malformed header MAC line")
            mac = _unb64(line[4:])
            if len(mac) != 32:
                raise HeaderError("the header's MAC is not 32 bytes")
            return Header(tuple(stanzas), mac, data[:at + 3], after)
        stanza, at = _stanza(data, at)
        stanzas.append(stanza)


def _stanza(data: bytes, at: int) -> tuple[Stanza, int]:
    line, at = _line(data, at)
    parts = line.split(b" ")
    if parts[0] != b"->" or len(parts) < 2 or any(
            not p or not all(33 <= c <= 126 for c in p) for p in parts[1:]):
        raise HeaderError("malformed recipient stanza")
    body = b""
    while True:
        chunk, at = _line(data, at)
        if len(chunk) > COLUMNS:
            raise HeaderError("a stanza body line is longer than 64 columns")
        body += chunk
        if len(chunk) < COLUMNS:
            return Stanza(parts[1], tuple(parts[2:]), _unb64(body)), at


MAX_HEADER = 1 << 20  # a header larger than this is not one Backstop wrote, nor age


def read_header(read_at: Callable[[int, int], bytes]) -> Header:
    """The header of a file read through ``read_at(offset, size)``."""
    size = 4096
    while True:
        data = read_at(0, size)
        try:
            return parse_header(data)
        except HeaderError as exc:
            if "cut short" not in exc.detail or len(data) < size or size >= MAX_HEADER:
                raise
            size *= 4


# -- payload -----------------------------------------------------------------------------


def _chunk_nonce(number: int, last: bool) -> bytes:
    return number.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class Writer:
    """An age file written to ``out`` as the plaintext comes: the header and the nonce at
    once, then each full chunk as soon as it fills; :meth:`close` seals the last one."""

    def __init__(self, out: BinaryIO, recipients: Iterable[Recipient]) -> None:
        recipients = list(recipients)
        if not recipients:
            raise KeyProblem("no recipients to encrypt to")
        self.out = out
        file_key = os.urandom(FILE_KEY)
        nonce = os.urandom(NONCE)
        self.aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        out.write(header_for(file_key, recipients) + nonce)
        self.buffer = bytearray()
        self.number = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """A full chunk is sealed once more data follows it (the last one may be full)."""
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            if len(self.buffer) == CHUNK:
                self._seal(self.buffer, last=False)
                self.buffer = bytearray()
            if not self.buffer and len(view) > CHUNK:  # straight from the caller's bytes
                self._seal(view[:CHUNK], last=False)
                view = view[CHUNK:]
                continue
            take = CHUNK - len(self.buffer)
            self.buffer += view[:take]
            view = view[take:]
        return size

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> None:
        self.out.write(self.aead.encrypt(_chunk_nonce(self.number, last), chunk, None))
        self.number += 1

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._seal(bytes(self.buffer), last=True)
            self.buffer = bytearray()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def sealed_size(plain: int, header: int) -> int:
    """Bytes of an age file whose payload is ``plain`` bytes, after a header of ``header``."""
    chunks = max(1, -(-plain // CHUNK))
    return header + NONCE + plain + chunks * TAG


class SeekableReader:
    """Random access to the plaintext of an age file read through ``read_at(offset,
    size)``, of ``size`` bytes in all: each read decrypts only the chunks it needs."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int,
                 identities: Iterable[Identity]) -> None:
        self.read_at = read_at
        header = read_header(read_at)
        file_key = header.file_key(identities)
        self.start = header.length + NONCE
        nonce = read_at(header.length, NONCE)
        if len(nonce) != NONCE:
            raise HeaderError("the file ends before its payload nonce")
        self.aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        sealed = size - self.start
        self.chunks = max(1, -(-sealed // SEALED))
        if sealed < TAG or (sealed % SEALED and sealed % SEALED < TAG):
            raise PayloadError("the payload is cut short")
        self.size = sealed - self.chunks * TAG  # plaintext bytes

    def chunk(self, number: int) -> bytes:
        """Plaintext chunk ``number``, authenticated; PayloadError naming it if not."""
        return self.open_chunk(number, self.read_at(self.start + number * SEALED, SEALED))

    def open_chunk(self, number: int, sealed: bytes) -> bytes:
        """Chunk ``number`` of the payload from its ``sealed`` bytes, authenticated."""
        last = number == self.chunks - 1
        try:
            plain = self.aead.decrypt(_chunk_nonce(number, last), sealed, None)
        except InvalidTag:
            raise PayloadError(f"payload chunk {number} does not authenticate: the file "
                               "was changed or cut") from None
        if (not last and len(plain) != CHUNK) or (last and not plain and number):
            raise PayloadError(f"payload chunk {number} has a wrong length")
        return plain

    def read(self, offset: int, size: int) -> bytes:
        """``size`` plaintext bytes from ``offset`` (fewer at the end)."""
        if offset < 0 or size < 0:
            raise ValueError("a negative offset or size")
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        first, last = offset // CHUNK, (end - 1) // CHUNK
        data = b"".join(self.chunk(n) for n in range(first, last + 1))
        return data[offset - first * CHUNK:end - first * CHUNK]

    def stream(self, offset: int = 0) -> Iterator[bytes]:
        """The plaintext from ``offset`` to the end, chunk by chunk."""
        for number in range(offset // CHUNK, self.chunks):
            plain = self.chunk(number)
            yield plain[offset - number * CHUNK:] if number == offset // CHUNK else plain


def decrypt_stream(source: BinaryIO, identities: Iterable[Identity]) -> Iterator[bytes]:
    """The plaintext of an age file read front to back from ``source`` (no seeking): a
    chunk is released only once its tag was checked, and the last one is marked last."""
    head = bytearray()
    while True:
        more = source.read(4096)
        head += more
        try:
            header = parse_header(bytes(head))
            break
        except HeaderError as exc:
            if "cut short" not in exc.detail or not more or len(head) >= MAX_HEADER:
                raise
    file_key = header.file_key(identities)
    rest = bytearray(head[header.length:])
    while len(rest) < NONCE:
        more = source.read(NONCE - len(rest))
        if not more:
            raise HeaderError("the file ends before its payload nonce")
        rest += more
    aead = ChaCha20Poly1305(_hkdf(file_key, bytes(rest[:NONCE]), b"payload"))
    del rest[:NONCE]
    yield from _open_chunks(aead, source, rest)


def _open_chunks(aead: ChaCha20Poly1305, source: BinaryIO,
                 pending: bytearray) -> Iterator[bytes]:
    """Chunk by chunk, as age's reference reader does: a full chunk opens as a middle chunk
    or else as the last one; a short one must be the last; nothing may follow the last."""
    number = 0
    while True:
        while len(pending) < SEALED:
            more = source.read(SEALED - len(pending))
            if not more:
                break
            pending += more
        sealed = bytes(pending[:SEALED])
        del pending[:SEALED]
        if not sealed:
            raise PayloadError("the payload ends without its last chunk")
        last = len(sealed) < SEALED
        plain = _open(aead, number, sealed, last)
        if plain is None and not last:
            last, plain = True, _open(aead, number, sealed, True)
        if plain is None:
            raise PayloadError(f"payload chunk {number} does not authenticate: the file "
                               "was changed or cut")
        if last and not plain and number:
            raise PayloadError("an empty last chunk after a full one")
        yield plain
        if last:
            if pending or source.read(1):
                raise PayloadError("data after the last chunk")
            return
        number += 1


def _open(aead: ChaCha20Poly1305, number: int, sealed: bytes, last: bool) -> bytes | None:
    try:
        return aead.decrypt(_chunk_nonce(number, last), sealed, None)
    except InvalidTag:
        return None
