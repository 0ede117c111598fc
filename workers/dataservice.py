"""The RDS data service (``backstop serve``): an RDS's data stores, over HTTP.

Built on Tornado's HTTP server (no hand-written protocol). It takes no paths from requests,
only names and ids that the URL patterns below validate, and resolves them to the stores
of its RDS; it never writes outside them. Every request carries a token (:mod:`access`).

A saveset is written as a staging: ``POST`` one, ``PUT`` its parts in segments (each an
append at a stated offset), then ``commit`` or abort it. A staging nobody touched for
``io_timeout`` (its client died, or the connection broke) is aborted, so what a lost client
staged is dropped; a service that starts drops the stagings a killed one left behind.
Store errors travel as JSON: ``{"error": "storage_unavailable", "reason", "message"}`` with
503, ``saveset_missing`` with 404, ``forbidden`` with 403.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from backstop.errors import SavesetMissing, StorageUnavailable
from backstop.model import SavesetKey
from backstop.workers.access import AUTH_HEADER, Forbidden, Identity, Tokens
from backstop.workers.store import META, Staging, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a name or id may be: the config's name alphabet, at most 200 characters; never
# "." or "..", a slash, a NUL or anything outside ASCII.
ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}"
# Part names of a saveset (archive.tar.zst, manifest.jsonl.zst, saveset.json, ...).
PART = r"[a-z][a-z0-9_.-]{0,63}"
# The most of a staging's record (META) kept to check whose task it is.
RECORD_BYTES = 1 << 20
# Bytes of a part sent per write while it is read.
READ_CHUNK = 1 << 20
# The most a socket read takes at once (Tornado allocates this much for every read: larger
# wastes more than it saves on loopback, measured with bench/datapath.py).
RECEIVE_CHUNK = 256 << 10


@dataclass
class OpenStaging:
    staging: Staging
    store: Store
    key: SavesetKey
    owner: Identity
    touched: float = field(default_factory=time.monotonic)
    sizes: dict[str, int] = field(default_factory=dict)
    writers: dict[str, Any] = field(default_factory=dict)
    record: bytearray = field(default_factory=bytearray)  # the META part, as it was sent


class DataService:
    """The stores of one RDS and the stagings in progress; shared by every handler."""

    def __init__(self, stores: dict[str, Store], tokens: Tokens, io_timeout_s: float,
                 threads: int = 8) -> None:
        self.stores = stores
        self.tokens = tokens
        self.io_timeout_s = io_timeout_s
        self.stagings: dict[str, OpenStaging] = {}
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="data")
        self.reaper: PeriodicCallback | None = None

    def application(self) -> Application:
        routes: list[Any] = [
            (r"/v1/ping", PingHandler, {"service": self}),
            (rf"/v1/stores/({ID})/space", SpaceHandler, {"service": self}),
            (rf"/v1/stores/({ID})/savesets", ListHandler, {"service": self}),
            (rf"/v1/stores/({ID})/savesets/({ID})", FindHandler, {"service": self}),
            (rf"/v1/stores/({ID})/savesets/({ID})/({ID})/({ID})", SavesetHandler,
             {"service": self}),
            (rf"/v1/stores/({ID})/savesets/({ID})/({ID})/({ID})/({PART})", PartHandler,
             {"service": self}),
            (rf"/v1/stores/({ID})/stagings", StageHandler, {"service": self}),
            (rf"/v1/stagings/({ID})", StagingHandler, {"service": self}),
            (rf"/v1/stagings/({ID})/commit", CommitHandler, {"service": self}),
            (rf"/v1/stagings/({ID})/({PART})", SegmentHandler, {"service": self}),
        ]
        return Application(routes, default_handler_class=NotFound,
                           default_handler_args={"service": self})

    def start(self) -> None:
        """Drop what killed writers left in the stores; reap idle stagings from now on."""
        for store in self.stores.values():
            try:
                store.drop_abandoned()
            except StorageUnavailable as exc:
                log.warning("data store %s: %s", store.name, exc)
        every_ms = max(200.0, min(5.0, self.io_timeout_s / 4) * 1000)
        self.reaper = PeriodicCallback(self.reap, every_ms)
        self.reaper.start()

    def stop(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()
        for sid in list(self.stagings):
            self.drop(sid, "the data service stopped")
        self.executor.shutdown(wait=True)

    def reap(self) -> None:
        cutoff = time.monotonic() - self.io_timeout_s
        for sid, open_ in list(self.stagings.items()):
            if open_.touched < cutoff:
                self.drop(sid, f"untouched for {self.io_timeout_s:g} s (client gone?)")

    def drop(self, sid: str, why: str) -> Future[None] | None:
        open_ = self.stagings.pop(sid, None)
        if open_ is None:
            return None
        log.warning("staging of saveset %s in store %s dropped: %s",
                    open_.key.saveset_id, open_.store.name, why)
        return self.executor.submit(open_.staging.abort)

    def supersede(self, store: Store, saveset_id: str) -> list[Future[None]]:
        """Drop the stagings of a saveset that is being staged again: a saveset id is its
        run's, and a run is staged anew only once the process that staged it before is
        gone (its run lease ran out), so those stagings have no writer any more."""
        stale = [sid for sid, o in self.stagings.items()
                 if o.store is store and o.key.saveset_id == saveset_id]
        dropped = [self.drop(sid, "its saveset is being staged again") for sid in stale]
        return [f for f in dropped if f is not None]

    def store(self, name: str) -> Store:
        found = self.stores.get(name)
        if found is None:
            raise HTTPError(404, reason="unknown data store")
        return found

    def staging(self, sid: str, who: Identity) -> OpenStaging:
        open_ = self.stagings.get(sid)
        if open_ is None or open_.owner != who:
            raise HTTPError(404, reason="unknown staging")
        open_.touched = time.monotonic()
        return open_


def record_task(record: bytes) -> str | None:
    """The task a saveset's record (its META part) names."""
    return str(json.loads(record).get("task") or "") or None


def task_of(store: Store, key: SavesetKey) -> str | None:
    """The task a committed saveset belongs to, from its record."""
    with store.read(key, META) as meta:
        return record_task(meta.read())


def staged_task(open_: OpenStaging) -> str | None:
    """The task named by the record of a staging (its META part), if it wrote one."""
    try:
        return record_task(bytes(open_.record))
    except ValueError:
        return None


class Handler(RequestHandler):
    """Authenticates every request; maps store errors to JSON answers."""

    service: DataService
    who: Identity

    def initialize(self, service: DataService) -> None:
        self.service = service

    def prepare(self) -> Awaitable[None] | None:
        self.authenticate()
        return None

    def authenticate(self) -> None:
        """Answer 401 unless the request carries a token the service knows."""
        who = self.service.tokens.identify(self.request.headers.get(AUTH_HEADER))
        if who is None:
            # logged without the token: only where it came from
            log.warning("data service: token refused for %s %s from %s", self.request.method,
                        self.request.path, self.request.remote_ip)
            self.answer(401, {"error": "unauthorized", "message": "token refused"})
            return
        self.who = who

    def answer(self, status: int, body: dict[str, Any] | list[Any] | None = None) -> None:
        self.set_status(status)
        if body is not None:
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(body))
        self.finish()

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store operation off the event loop; its errors become answers."""
        return await IOLoop.current().run_in_executor(self.service.executor, fn, *args)

    async def guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except StorageUnavailable as exc:
            self.answer(503, {"error": "storage_unavailable", "reason": exc.reason.value,
                              "message": exc.message})
        except SavesetMissing as exc:
            self.answer(404, {"error": "saveset_missing", "message": str(exc),
                              "saveset_id": exc.saveset_id})
        except Forbidden as exc:
            self.answer(403, {"error": "forbidden", "message": str(exc)})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": "http", "message": self._reason}))


class NotFound(Handler):
    def prepare(self) -> Awaitable[None] | None:
        self.authenticate()
        if not self._finished:
            self.answer(404, {"error": "not_found", "message": "no such resource"})
        return None


class PingHandler(Handler):
    def get(self) -> None:
        self.answer(200, {"stores": sorted(self.service.stores)})


class SpaceHandler(Handler):
    async def get(self, store: str) -> None:
        async def work() -> None:
            space = await self.blocking(self.service.store(store).space)
            self.answer(200, {"used_bytes": space.used_bytes, "free_bytes": space.free_bytes})
        await self.guarded(work)


class ListHandler(Handler):
    async def get(self, store: str) -> None:
        async def work() -> None:
            found = self.service.store(store)
            keys = await self.blocking(found.list)
            if not self.who.fleet:
                keys = [k for k in keys if self.who.may_touch(await self.blocking(task_of,
                                                                                  found, k))]
            self.answer(200, [key_json(k) for k in keys])
        await self.guarded(work)


class FindHandler(Handler):
    async def get(self, store: str, saveset_id: str) -> None:
        async def work() -> None:
            found = self.service.store(store)
            key = await self.blocking(found.find, saveset_id)
            if key is None:
                raise SavesetMissing(store, saveset_id)
            self.who.check_task(await self.blocking(task_of, found, key), saveset_id)
            self.answer(200, key_json(key))
        await self.guarded(work)


class SavesetHandler(Handler):
    async def delete(self, store: str, pool: str, medium: str, saveset_id: str) -> None:
        async def work() -> None:
            self.who.check_delete()
            await self.blocking(self.service.store(store).delete,
                                SavesetKey(pool, medium, saveset_id))
            self.answer(204)
        await self.guarded(work)


class PartHandler(Handler):
    async def get(self, store: str, pool: str, medium: str, saveset_id: str,
                  part: str) -> None:
        async def work() -> None:
            found, key = self.service.store(store), SavesetKey(pool, medium, saveset_id)
            self.who.check_task(await self.blocking(task_of, found, key), saveset_id)
            size = await self.blocking(found.part_size, key, part)
            start = range_start(self.request.headers.get("Range"), size)
            data = await self.blocking(found.read, key, part, start or 0)
            try:
                if start is not None:  # from a byte on: a restore that reads a few frames
                    self.set_status(206)
                    self.set_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.set_header("Content-Type", "application/octet-stream")
                self.set_header("Content-Length", str(size - (start or 0)))
                while chunk := await self.blocking(data.read, READ_CHUNK):
                    self.write(chunk)
                    await self.flush()
            finally:
                data.close()
            self.finish()
        await self.guarded(work)


class StageHandler(Handler):
    async def post(self, store: str) -> None:
        async def work() -> None:
            found = self.service.store(store)
            request = json.loads(self.request.body or b"{}")
            key = SavesetKey(valid_id(request.get("pool")), valid_id(request.get("medium")),
                             valid_id(request.get("saveset_id")))
            reserve = int(request.get("reserve_bytes") or 0)
            room = request.get("room_bytes")
            for aborted in self.service.supersede(found, key.saveset_id):
                await asyncio.wrap_future(aborted)
            staging = await self.blocking(found.stage, key, reserve,
                                          None if room is None else int(room))
            sid = secrets.token_hex(16)
            self.service.stagings[sid] = OpenStaging(staging, found, key, self.who)
            self.answer(201, {"staging": sid})
        await self.guarded(work)


@stream_request_body
class SegmentHandler(Handler):
    """Appends a segment to a part as it arrives (nothing of it is held in memory); a
    connection that breaks mid-segment drops the staging at once."""

    open_: OpenStaging | None = None
    writer: Any = None
    received = 0
    failure: StorageUnavailable | None = None
    # chunks as the socket delivers them (often 64 KiB), written a MiB at a time: one
    # hand-off to a writing thread per MiB, not per chunk
    held: list[bytes]
    held_bytes = 0

    async def prepare(self) -> None:
        self.authenticate()
        if self._finished:
            return
        sid, part = self.path_args
        open_ = self.service.staging(sid, self.who)
        offset = int(self.get_query_argument("offset", "0"))
        if offset != open_.sizes.get(part, 0):
            self.answer(409, {"error": "offset", "message": f"part {part} holds "
                              f"{open_.sizes.get(part, 0)} bytes, not {offset}"})
            return
        if part not in open_.writers:
            open_.writers[part] = open_.staging.open(part)
        self.open_, self.writer, self.held = open_, open_.writers[part], []

    async def data_received(self, chunk: bytes) -> None:
        if self.writer is None or self.failure is not None:
            return
        self.held.append(chunk)
        self.held_bytes += len(chunk)
        self.received += len(chunk)
        if self.held_bytes >= READ_CHUNK:
            await self.write_held()

    async def write_held(self) -> None:
        data, self.held, self.held_bytes = b"".join(self.held), [], 0
        if self.path_args[1] == META and self.open_ is not None:
            self.open_.record += data[:RECORD_BYTES - len(self.open_.record)]
        try:
            await self.blocking(self.writer.write, data)
        except StorageUnavailable as exc:
            self.failure = exc  # answered when the segment is complete

    async def put(self, sid: str, part: str) -> None:
        async def work() -> None:
            assert self.open_ is not None
            if self.held and self.failure is None:
                await self.write_held()
            if self.failure is not None:
                raise self.failure
            self.open_.sizes[part] = self.open_.sizes.get(part, 0) + self.received
            self.open_.touched = time.monotonic()
            self.answer(200, {"size": self.open_.sizes[part]})
        await self.guarded(work)

    def on_connection_close(self) -> None:
        if self.open_ is not None and not self._finished:
            sid = self.path_args[0]
            self.service.drop(sid, "the connection broke in the middle of a segment")


class CommitHandler(Handler):
    async def post(self, sid: str) -> None:
        async def work() -> None:
            open_ = self.service.staging(sid, self.who)
            if not self.who.fleet:
                self.who.check_task(await self.blocking(staged_task, open_),
                                    open_.key.saveset_id)
            self.service.stagings.pop(sid, None)
            await self.blocking(open_.staging.commit)
            self.answer(204)
        await self.guarded(work)


class StagingHandler(Handler):
    async def delete(self, sid: str) -> None:
        async def work() -> None:
            self.service.staging(sid, self.who)
            aborted = self.service.drop(sid, "aborted by its client")
            if aborted is not None:
                await asyncio.wrap_future(aborted)  # gone before the client hears so
            self.answer(204)
        await self.guarded(work)


def key_json(key: SavesetKey) -> dict[str, str]:
    return {"pool": key.pool, "medium": key.medium, "saveset_id": key.saveset_id}


def valid_id(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(ID, value):
        raise HTTPError(400, reason="bad name or id")
    return value


def range_start(header: str | None, size: int) -> int | None:
    """The first byte a ``Range: bytes=N-`` asks for (None: no range, the whole part);
    416 for any other range, or one past the end."""
    if header is None:
        return None
    found = re.fullmatch(r"bytes=(\d{1,19})-", header.strip())
    if found is None or int(found[1]) >= max(size, 1):
        raise HTTPError(416, reason="only a range of the form bytes=N- within the part")
    return int(found[1])


