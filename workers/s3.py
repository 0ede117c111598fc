"""The ``s3`` data store: savesets as objects of an S3 bucket (SPEC section 14).

Built on boto3 (botocore's signing, retries and multipart API). Layout under the store's
prefix::

    backstop-store.json                        marker: names the store
    pools/<pool>/<MEDIUM>/<id>/archive.tar.zst streamed as a multipart upload
    pools/<pool>/<MEDIUM>/<id>/saveset.json
    pools/<pool>/<MEDIUM>/<id>/manifest.jsonl.zst  written last: the saveset exists once
                                               this object does

A staging uploads the archive as it is written (parts of ``PART_BYTES``, so memory stays
flat) and keeps the small parts until ``commit``, which writes the record, sets the
retention of what was uploaded when the store has ``object_lock``, and writes the manifest
last, locked too. ``abort`` aborts the upload and deletes what was written (nothing of it
is locked yet). Every failure of the endpoint, the bucket or the credentials becomes
``StorageUnavailable(store_offline)`` saying which; a bucket quota or the store's
``capacity`` crossed becomes ``out_of_space``.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from backstop.config import S3Location
from backstop.errors import Reason, SavesetMissing, StorageError, StorageUnavailable
from backstop.model import SavesetKey, Space
from backstop.workers.store import ARCHIVE, MANIFEST, Staging, Store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MARKER = "backstop-store.json"
PART_BYTES = 8 << 20  # a part of a multipart upload (S3 wants at least 5 MiB but the last)
PARTS_IN_FLIGHT = 3
INIT_ATTEMPTS = 20  # the marker's, 0.5 s apart
# Free bytes reported for a store without ``capacity``: a bucket has no size of its own.
UNBOUNDED = 1 << 60
# Error codes of S3 (and S3-like servers) that mean the bucket or account is full.
FULL_CODES = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage",
              "EntityTooLarge", "XAmzContentSHA256Mismatch_QuotaExceeded"}
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                    "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}


Versions = list[tuple[str, str | None]]  # (object key, version id) of objects written


def version_of(version: str | None) -> dict[str, Any]:
    return {"VersionId": version} if version else {}


class LockedSaveset(StorageError):
    """A saveset whose objects are under object lock until a date: it stays."""

    def __init__(self, store: str, saveset_id: str, until: datetime) -> None:
        super().__init__(store, saveset_id, until)
        self.store, self.saveset_id, self.until = store, saveset_id, until

    def __str__(self) -> str:
        return (f"saveset {self.saveset_id} in data store {self.store} is locked until "
                f"{self.until.isoformat()} (object lock); it stays until then")


class S3Store(Store):
    def __init__(self, name: str, location: S3Location, access_key: str, secret_key: str,
                 capacity_bytes: int | None = None, reserve_bytes: int = 0,
                 retention: dict[str, timedelta] | None = None,
                 connect_timeout_s: float = 10, io_timeout_s: float = 60) -> None:
        self.name = name
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.capacity_bytes = capacity_bytes
        self.reserve_bytes = reserve_bytes
        # each pool's retention: a saveset's objects are locked at least as long
        self.retention = retention or {}
        # the variables that should hold the keys but are not set (the keys stay in boto3)
        self.keys_missing = [env for env, value in ((location.access_key_env, access_key),
                                                    (location.secret_key_env, secret_key))
                             if not value]
        self._connect: Callable[[], S3Client] = lambda: boto3.client(
            "s3", endpoint_url=location.endpoint, region_name=location.region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(connect_timeout=connect_timeout_s, read_timeout=io_timeout_s,
                          retries={"max_attempts": 2, "mode": "standard"},
                          s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
        self._client, self._pid = self._connect(), os.getpid()
        # When a call last found the endpoint stalled or gone (time.monotonic()): the rest
        # of that upload (its next parts, aborting it: left to drop_abandoned) does not wait
        # out the timeouts again, so a run ends within connect + 2 x io timeout of a stall.
        self.unreachable_at = -float("inf")
        self.claims: dict[int, int] = {}  # staging -> bytes claimed, in this process
        self.claims_lock = threading.Lock()
        self.checked_lock = False

    # -- errors --------------------------------------------------------------------------

    @contextmanager
    def calling(self, doing: str, saveset_id: str | None = None) -> Iterator[None]:
        """Map what the endpoint says to the errors of a store."""
        if self.keys_missing:
            raise StorageUnavailable(Reason.STORE_OFFLINE, (
                f"data store {self.name}: no S3 keys: the environment variable(s) "
                f"{', '.join(self.keys_missing)} named by the config are not set"))
        try:
            yield
        except ClientError as exc:
            raise self.meaning(exc, doing, saveset_id) from exc
        except BotoCoreError as exc:  # refused, timed out, reset: the endpoint is not there
            self.unreachable_at = time.monotonic()
            raise StorageUnavailable(Reason.STORE_OFFLINE, f"data store {self.name}: endpoint "
                                     f"{self.location.endpoint} unreachable ({doing}): "
                                     f"{exc}") from exc

    def unreachable_since(self, since: float) -> bool:
        """A call found the endpoint unreachable at or after ``since`` (time.monotonic())."""
        return self.unreachable_at >= since

    def meaning(self, exc: ClientError, doing: str, saveset_id: str | None) -> StorageError:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        where = f"data store {self.name} (bucket {self.bucket} at {self.location.endpoint})"
        if code in ("NoSuchKey", "404", "InvalidRange") and saveset_id is not None:
            return SavesetMissing(self.name, saveset_id)
        if code in ("NoSuchBucket",):
            return StorageUnavailable(Reason.STORE_OFFLINE, f"{where}: the bucket is missing")
        if code in CREDENTIAL_CODES:
            return StorageUnavailable(Reason.STORE_OFFLINE, f"{where}: the credentials were "
                                      f"refused ({code}) while trying to {doing}")
        if code in FULL_CODES:
            return StorageUnavailable(Reason.OUT_OF_SPACE, f"{where}: bucket quota crossed "
                                      f"({code})")
        return StorageUnavailable(Reason.STORE_OFFLINE, f"{where}: {doing}: {code or exc}")

    # -- layout --------------------------------------------------------------------------

    def object_key(self, key: SavesetKey, part: str) -> str:
        return f"{self.prefix}pools/{key.pool}/{key.medium}/{key.saveset_id}/{part}"

    def saveset_prefix(self, key: SavesetKey) -> str:
        return f"{self.prefix}pools/{key.pool}/{key.medium}/{key.saveset_id}/"

    def objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])  # type: ignore[misc]

    # -- the store -----------------------------------------------------------------------

    def init(self) -> None:
        """Create the bucket when it is missing (with object lock when the store wants it)
        and write the marker; refuse a bucket without object lock for a locked store."""
        with self.calling("create the bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket"):
                    raise
                self.client.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=bool(
                    self.location.object_lock))
        self.check_lock()
        # A bucket just made may answer InternalError until the server has placed its
        # first volume (SeaweedFS does): the marker is tried again for a while.
        for attempt in range(INIT_ATTEMPTS):
            try:
                with self.calling("write the store marker"):
                    self.client.put_object(Bucket=self.bucket, Key=self.prefix + MARKER,
                                           Body=json.dumps({"store": self.name}).encode())
                return
            except StorageUnavailable as exc:
                if "InternalError" not in exc.message or attempt == INIT_ATTEMPTS - 1:
                    raise
                time.sleep(0.5)

    def check_lock(self) -> None:
        if self.location.object_lock is None or self.checked_lock:
            return
        with self.calling("read the bucket's object lock"):
            try:
                found = self.client.get_object_lock_configuration(Bucket=self.bucket)
                enabled = found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            except ClientError as exc:
                if "ObjectLockConfigurationNotFound" not in str(
                        exc.response.get("Error", {}).get("Code")):
                    raise
                enabled = None
        if enabled != "Enabled":
            raise StorageUnavailable(Reason.STORE_OFFLINE, (
                f"data store {self.name}: bucket {self.bucket} has no object lock enabled, "
                f"and the store's object_lock needs it (create the bucket with object lock, "
                f"or let `backstop store init {self.name}` create it)"))
        self.checked_lock = True

    def space(self) -> Space:
        self.check_lock()
        with self.calling("measure the used space"):
            used = sum(int(o["Size"]) for o in self.objects(self.prefix + "pools/"))
        with self.claims_lock:
            claimed = sum(self.claims.values())
        if self.capacity_bytes is None:
            return Space(used, UNBOUNDED)
        free = self.capacity_bytes - self.reserve_bytes - used - claimed
        return Space(used, max(0, free))

    def stage(self, key: SavesetKey, reserve_bytes: int, room_bytes: int | None = None
              ) -> Staging:
        space = self.space()
        if reserve_bytes > space.free_bytes:
            raise StorageUnavailable(Reason.OUT_OF_SPACE, (
                f"data store {self.name}: {reserve_bytes} bytes needed, {space.free_bytes} "
                f"free"))
        staging = S3Staging(self, key, space.free_bytes, room_bytes)
        with self.claims_lock:
            self.claims[id(staging)] = reserve_bytes
        return staging

    def list(self) -> builtins.list[SavesetKey]:
        with self.calling("list savesets"):
            found = []
            for item in self.objects(self.prefix + "pools/"):
                parts = str(item["Key"])[len(self.prefix):].split("/")
                if len(parts) == 5 and parts[4] == MANIFEST:
                    found.append(SavesetKey(parts[1], parts[2], parts[3]))
        return sorted(found)

    def find(self, saveset_id: str) -> SavesetKey | None:
        return next((k for k in self.list() if k.saveset_id == saveset_id), None)

    def read(self, key: SavesetKey, part: str, offset: int = 0) -> BinaryIO:
        with self.calling(f"read {key.saveset_id}", key.saveset_id):
            if not self._exists(key):
                raise SavesetMissing(self.name, key.saveset_id)
            options: dict[str, Any] = {"Range": f"bytes={offset}-"} if offset else {}
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key, part),
                                          **options)["Body"]
        return Body(self, body, key.saveset_id)  # type: ignore[return-value]

    def part_size(self, key: SavesetKey, part: str) -> int:
        with self.calling(f"read {key.saveset_id}", key.saveset_id):
            if not self._exists(key):
                raise SavesetMissing(self.name, key.saveset_id)
            return int(self.client.head_object(Bucket=self.bucket,
                                               Key=self.object_key(key, part))["ContentLength"])

    def _exists(self, key: SavesetKey) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key, MANIFEST))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                return False
            raise
        return True

    def delete(self, key: SavesetKey) -> None:
        """The manifest first (the saveset is gone for listings), then the rest; every
        version, so nothing stays behind. A saveset under object lock stays: LockedSaveset
        says until when."""
        now = datetime.now(UTC)
        with self.calling(f"delete {key.saveset_id}"):
            versions = self._versions(self.saveset_prefix(key))
            for object_key, version in versions:
                until = self._locked_until(object_key, version)
                if until is not None and until > now:
                    raise LockedSaveset(self.name, key.saveset_id, until)
            versions.sort(key=lambda v: not v[0].endswith(MANIFEST))
            for object_key, version in versions:
                self.client.delete_object(Bucket=self.bucket, Key=object_key,
                                          **version_of(version))

    def _versions(self, prefix: str) -> Versions:
        """Every version and delete marker under ``prefix`` (plain keys in a bucket without
        versioning)."""
        found: Versions = []
        pages = self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                version = item.get("VersionId")
                found.append((str(item["Key"]), None if version in (None, "null")
                              else str(version)))
        return found

    def _locked_until(self, object_key: str, version: str | None) -> datetime | None:
        if self.location.object_lock is None:
            return None
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key,
                                           **version_of(version))
        except ClientError:
            return None  # a delete marker: nothing to keep
        until = head.get("ObjectLockRetainUntilDate")
        return until if isinstance(until, datetime) else None

    def drop_abandoned(self) -> None:
        """Abort the uploads a killed writer left (no part for an hour): they hold bytes
        that no listing shows."""
        cutoff = datetime.now(UTC) - ABANDONED_AFTER
        with self.calling("drop abandoned uploads"):
            uploads = self.client.list_multipart_uploads(
                Bucket=self.bucket, Prefix=self.prefix + "pools/").get("Uploads", [])
            for upload in uploads:
                parts = self.client.list_parts(Bucket=self.bucket, Key=upload["Key"],
                                               UploadId=upload["UploadId"]).get("Parts", [])
                latest = max([upload["Initiated"], *(p["LastModified"] for p in parts)])
                if latest < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])

    def retain_until(self, pool: str) -> datetime | None:
        """When the objects of a saveset of ``pool`` written now may go: the lock's days,
        or the pool's retention when longer."""
        lock = self.location.object_lock
        if lock is None:
            return None
        days = timedelta(days=lock.days)
        return datetime.now(UTC) + max(days, self.retention.get(pool, days))

    @property
    def client(self) -> S3Client:
        """This process's client: a process forked from the one that made the store (the
        engine's processes of a restore) makes its own, never sharing a connection."""
        if self._pid != os.getpid():
            self._client, self._pid = self._connect(), os.getpid()
        return self._client

    def close(self) -> None:
        if self._pid == os.getpid():
            self._client.close()


ABANDONED_AFTER = timedelta(hours=1)


class Body:
    """An object being read (a ``StreamingBody``), with its errors mapped."""

    def __init__(self, store: S3Store, body: Any, saveset_id: str) -> None:
        self.store, self.body, self.saveset_id = store, body, saveset_id

    def read(self, size: int = -1) -> bytes:
        with self.store.calling(f"read {self.saveset_id}"):
            return bytes(self.body.read(None if size < 0 else size))

    def close(self) -> None:
        with suppress(Exception):
            self.body.close()

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3Staging(Staging):
    def __init__(self, store: S3Store, key: SavesetKey, limit_bytes: int,
                 room_bytes: int | None) -> None:
        self.store, self.key = store, key
        self.limit_bytes, self.room_bytes = limit_bytes, room_bytes
        self.written = 0
        self.uploads: list[Upload] = []
        self.small: dict[str, io.BytesIO] = {}
        self.stored: Versions = []

    def account(self, size: int) -> None:
        self.written += size
        if self.room_bytes is not None and self.written > self.room_bytes:
            raise StorageUnavailable(Reason.NO_FREE_MEDIA, f"medium {self.key.medium} of pool "
                                     f"{self.key.pool} is full ({self.room_bytes} bytes left)")
        if self.written > self.limit_bytes:
            raise StorageUnavailable(Reason.OUT_OF_SPACE, (
                f"data store {self.store.name}: capacity crossed mid-write "
                f"({self.limit_bytes} bytes)"))

    def open(self, part: str) -> BinaryIO:
        if part == ARCHIVE:
            upload = Upload(self, self.store.object_key(self.key, part))
            self.uploads.append(upload)
            return upload  # type: ignore[return-value]
        buffer = self.small[part] = Small(self)
        return buffer

    def commit(self) -> None:
        store, until = self.store, self.store.retain_until(self.key.pool)
        lock = store.location.object_lock
        locked: dict[str, Any] = ({"ObjectLockMode": lock.mode,
                                   "ObjectLockRetainUntilDate": until} if lock and until else {})
        try:
            for upload in self.uploads:
                upload.close()
            with store.calling(f"commit {self.key.saveset_id}"):
                for part, data in sorted(self.small.items(), key=lambda p: p[0] == MANIFEST):
                    object_key = store.object_key(self.key, part)
                    if part == MANIFEST and lock and until:  # what came before is locked too
                        for earlier, version in self.stored:
                            store.client.put_object_retention(
                                Bucket=store.bucket, Key=earlier, Retention={
                                    "Mode": lock.mode, "RetainUntilDate": until},
                                **version_of(version))
                    done = store.client.put_object(Bucket=store.bucket, Key=object_key,
                                                   Body=data.getvalue(), **locked
                                                   if part == MANIFEST else {})
                    self.stored.append((object_key, done.get("VersionId")))
        finally:
            self._release()

    def abort(self) -> None:
        store = self.store
        for upload in self.uploads:
            upload.abort()
        with suppress(StorageError), store.calling(f"abort {self.key.saveset_id}"):
            for object_key, version in self.stored:
                store.client.delete_object(Bucket=store.bucket, Key=object_key,
                                           **version_of(version))
        self.stored = []
        self._release()

    def _release(self) -> None:
        with self.store.claims_lock:
            self.store.claims.pop(id(self), None)


class Small(io.BytesIO):
    """A small part (record, manifest), kept until the commit; counted like the rest."""

    def __init__(self, staging: S3Staging) -> None:
        super().__init__()
        self.staging = staging

    def write(self, data: Any) -> int:
        self.staging.account(len(data))
        return super().write(data)

    def close(self) -> None:
        pass  # kept for the commit

    def __exit__(self, *exc: object) -> None:
        pass


class Upload:
    """The archive, streamed as a multipart upload in parts of ``PART_BYTES``, up to
    ``PARTS_IN_FLIGHT`` of them on their way at once; an object of one ``put`` when it is
    smaller than a part."""

    def __init__(self, staging: S3Staging, object_key: str) -> None:
        self.staging, self.object_key = staging, object_key
        self.store = staging.store
        self.started = time.monotonic()
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.sending: deque[Future[dict[str, Any]]] = deque()
        self.parts: list[dict[str, Any]] = []
        self.pool: ThreadPoolExecutor | None = None
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.staging.account(len(data))
        self.buffer += data
        if len(self.buffer) >= PART_BYTES:
            self._send()
        return len(data)

    def flush(self) -> None:
        pass

    def _send(self) -> None:
        store = self.store
        if self.upload_id is None:
            with store.calling(f"upload {self.staging.key.saveset_id}"):
                self.upload_id = store.client.create_multipart_upload(
                    Bucket=store.bucket, Key=self.object_key)["UploadId"]
            self.pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part")
        assert self.pool is not None
        number = len(self.parts) + len(self.sending) + 1
        self.sending.append(self.pool.submit(self._part, number, bytes(self.buffer)))
        self.buffer = bytearray()
        self._collect(PARTS_IN_FLIGHT - 1)

    def _part(self, number: int, data: bytes) -> dict[str, Any]:
        store = self.store
        if store.unreachable_since(self.started):  # a part before it found it stalled
            raise StorageUnavailable(Reason.STORE_OFFLINE, f"data store {store.name}: "
                                     f"endpoint {store.location.endpoint} did not answer a "
                                     "part before")
        with store.calling(f"upload {self.staging.key.saveset_id}"):
            done = store.client.upload_part(Bucket=store.bucket, Key=self.object_key,
                                            UploadId=self.upload_id or "", PartNumber=number,
                                            Body=data)
        return {"ETag": done["ETag"], "PartNumber": number}

    def _collect(self, keep: int) -> None:
        """Wait for parts sent (raising what sending one raised) until ``keep`` are left."""
        while len(self.sending) > keep:
            self.parts.append(self.sending.popleft().result())

    def close(self) -> None:
        if self.closed:
            return
        store = self.store
        if self.upload_id is None:  # small: one put
            with store.calling(f"upload {self.staging.key.saveset_id}"):
                done: Any = store.client.put_object(Bucket=store.bucket, Key=self.object_key,
                                                    Body=bytes(self.buffer))
        else:
            if self.buffer:
                self._send()
            self._collect(0)
            with store.calling(f"upload {self.staging.key.saveset_id}"):
                done = store.client.complete_multipart_upload(
                    Bucket=store.bucket, Key=self.object_key, UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts})  # type: ignore[typeddict-item]
            self.upload_id = None
        self.staging.stored.append((self.object_key, done.get("VersionId")))
        self._finish()

    def abort(self) -> None:
        if self.upload_id is not None and self.store.unreachable_since(self.started):
            self.upload_id = None  # left to drop_abandoned: the endpoint just did not answer
        if self.upload_id is not None:
            for sending in self.sending:
                sending.cancel()
            with suppress(StorageError), self.store.calling("abort an upload"):
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.object_key, UploadId=self.upload_id)
            self.upload_id = None
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        self.buffer = bytearray()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
