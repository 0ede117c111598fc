"""A data store on another host, reached through its RDS's data service (httpx).

:class:`RemoteStore` is the same store interface as the local one and passes the same
contract suite. Failures map as SPEC section 9 says: refused, a connect timeout, a failed
TLS handshake, a connection broken or stalled past ``io_timeout`` → ``rds_unreachable``;
the RDS's own reasons pass through; a refused token → ``store_offline`` saying so.
Parts are sent in segments of at most ``SEGMENT_BYTES``, one on the wire while the next
fills, so memory stays flat whatever the saveset's size.
"""

from __future__ import annotations

import io
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import httpcore  # noqa: F401 - httpx imports it on first use; a worker pays it before forking
import httpx

from backstop.config import Interface
from backstop.errors import CorruptSaveset, Reason, SavesetMissing, StorageUnavailable
from backstop.model import SavesetKey, Space
from backstop.settings import Settings
from backstop.workers.access import AUTH_HEADER, BEARER, SEGMENT_BYTES
from backstop.workers.engine import path_store, store_of
from backstop.workers.store import MARKER, Staging, Store

READ_CHUNK = 1 << 20
# Segments of a part queued for sending (in order, by one thread) while the next fills.
IN_FLIGHT = 2


@dataclass(frozen=True)
class Endpoint:
    """One interface of an RDS's data service, as a client reaches it."""

    url: str                   # http(s)://address:port
    interface: str             # its name, for messages and run records
    token: str
    connect_timeout_s: float
    io_timeout_s: float
    ca: Path | None = None     # with TLS: verify the service against this CA

    def client(self) -> httpx.Client:
        # over plain HTTP nothing is verified: loading the system's CAs for it costs 20 ms
        # a connection pool
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(self.ca))
                                         if self.ca else self.url.startswith("https:"))
        timeout = httpx.Timeout(self.io_timeout_s, connect=self.connect_timeout_s)
        return httpx.Client(base_url=self.url, verify=verify, timeout=timeout,
                            headers={AUTH_HEADER: BEARER + self.token})


class RemoteStore(Store):
    def __init__(self, name: str, endpoint: Endpoint) -> None:
        self.name = name
        self.endpoint = endpoint
        self._http: httpx.Client | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # When a call last found the interface refusing, stalled or broken
        # (time.monotonic()): the rest of that staging (its next segment, its abort) does
        # not wait out the timeouts again (the service drops an abandoned staging by
        # itself), so a run ends within connect + 2 x io timeout of a stall.
        self.unreachable_at = -float("inf")

    @property
    def http(self) -> httpx.Client:
        """The connection pool of this process (shared by its threads): a forked child never
        writes on its parent's connections, it opens its own."""
        if self._pid != os.getpid():  # a forked child, with one thread: start afresh
            self._http, self._pid, self._lock = None, os.getpid(), threading.Lock()
        with self._lock:
            if self._http is None:
                self._http = self.endpoint.client()
            return self._http

    def close(self) -> None:
        if self._http is not None and self._pid == os.getpid():
            self._http.close()
        self._http = None

    @contextmanager
    def calling(self, doing: str) -> Iterator[None]:
        """Network failures of one call become StorageUnavailable(rds_unreachable)."""
        try:
            yield
        except httpx.TransportError as exc:
            self.unreachable_at = time.monotonic()
            where = f"interface {self.endpoint.interface} ({self.endpoint.url})"
            raise StorageUnavailable(Reason.RDS_UNREACHABLE, f"data store {self.name}: "
                                     f"{doing}: {where}: {describe(exc)}") from exc

    def unreachable_since(self, since: float) -> bool:
        """A call found the interface unreachable at or after ``since`` (time.monotonic())."""
        return self.unreachable_at >= since

    def request(self, method: str, path: str, doing: str, **options: Any) -> httpx.Response:
        with self.calling(doing):
            response = self.http.request(method, f"/v1{path}", **options)
        self.check(response, doing)
        return response

    def check(self, response: httpx.Response, doing: str) -> None:
        """Raise what an error answer of the data service means."""
        if response.status_code < 400:
            return
        try:
            body = response.json()
        except ValueError:
            body = {}
        message = str(body.get("message") or response.reason_phrase)
        prefix = f"data store {self.name}: {doing}"
        if response.status_code == 401:
            raise StorageUnavailable(Reason.STORE_OFFLINE, f"{prefix}: the data service on "
                                     f"interface {self.endpoint.interface} refused the token")
        if body.get("error") == "storage_unavailable":
            raise StorageUnavailable(Reason(body["reason"]), str(body["message"]))
        if body.get("error") == "saveset_missing":
            raise SavesetMissing(self.name, str(body.get("saveset_id") or message))
        raise StorageUnavailable(Reason.STORE_OFFLINE, f"{prefix}: {message} "
                                 f"(HTTP {response.status_code})")

    def space(self) -> Space:
        found = self.request("GET", f"/stores/{self.name}/space", "space").json()
        return Space(int(found["used_bytes"]), int(found["free_bytes"]))

    def stage(self, key: SavesetKey, reserve_bytes: int, room_bytes: int | None = None
              ) -> Staging:
        body = {"pool": key.pool, "medium": key.medium, "saveset_id": key.saveset_id,
                "reserve_bytes": reserve_bytes, "room_bytes": room_bytes}
        found = self.request("POST", f"/stores/{self.name}/stagings", "stage a saveset",
                             json=body).json()
        return RemoteStaging(self, str(found["staging"]))

    def list(self) -> list[SavesetKey]:
        found = self.request("GET", f"/stores/{self.name}/savesets", "list savesets").json()
        return sorted(key_of(k) for k in found)

    def find(self, saveset_id: str) -> SavesetKey | None:
        try:
            found = self.request("GET", f"/stores/{self.name}/savesets/{saveset_id}",
                                 "find a saveset").json()
        except SavesetMissing:
            return None
        return key_of(found)

    def read(self, key: SavesetKey, part: str, offset: int = 0) -> BinaryIO:
        path = f"/v1/stores/{self.name}/savesets/{key.pool}/{key.medium}/{key.saveset_id}/{part}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.calling(f"read {key.saveset_id}"):
            response = self.http.send(self.http.build_request("GET", path, headers=headers),
                                      stream=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            self.check(response, f"read {key.saveset_id}")
        if offset and response.status_code != 206:
            response.close()
            raise CorruptSaveset(key.saveset_id, f"the data service did not send {part} "
                                 f"from byte {offset} (HTTP {response.status_code})")
        return io.BufferedReader(ResponseStream(self, response, key.saveset_id),
                                 READ_CHUNK)

    def delete(self, key: SavesetKey) -> None:
        self.request("DELETE", f"/stores/{self.name}/savesets/{key.pool}/{key.medium}/"
                               f"{key.saveset_id}", f"delete {key.saveset_id}")


class ResponseStream(io.RawIOBase):
    """The body of a streamed answer, as a file to read (network errors mapped)."""

    def __init__(self, store: RemoteStore, response: httpx.Response, saveset_id: str) -> None:
        self.store, self.response, self.saveset_id = store, response, saveset_id
        self.chunks = response.iter_raw(READ_CHUNK)
        self.left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.left:
            with self.store.calling(f"read {self.saveset_id}"):
                self.left = next(self.chunks, b"")
        size = min(len(buffer), len(self.left))
        buffer[:size] = self.left[:size]
        self.left = self.left[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self.response.close()
        super().close()


class RemoteStaging(Staging):
    def __init__(self, store: RemoteStore, sid: str) -> None:
        self.store, self.sid = store, sid
        self.started = time.monotonic()
        self.writers: list[SegmentWriter] = []
        self.sender = ThreadPoolExecutor(1, thread_name_prefix=f"send-{sid[:6]}")
        self.done = False

    def open(self, part: str) -> BinaryIO:
        writer = SegmentWriter(self, part)
        self.writers.append(writer)
        return writer  # type: ignore[return-value]

    def send(self, part: str, offset: int, chunks: list[bytes | memoryview], size: int
             ) -> None:
        """Append a segment to a part. It goes out chunk by chunk with its length stated:
        handed to httpx whole, a segment of several MiB is copied several times over.
        Right after a segment found the interface unreachable, the next one fails at once
        instead of waiting out the timeouts again."""
        if self.store.unreachable_since(self.started):
            raise StorageUnavailable(Reason.RDS_UNREACHABLE, f"data store {self.store.name}: "
                                     f"write {part}: interface {self.store.endpoint.interface} "
                                     "did not answer the segment before")
        self.store.request("PUT", f"/stagings/{self.sid}/{part}", f"write {part}",
                           params={"offset": offset}, content=iter(chunks),
                           headers={"Content-Length": str(size)})

    def commit(self) -> None:
        try:
            for writer in self.writers:
                writer.close()
            self.store.request("POST", f"/stagings/{self.sid}/commit", "commit")
            self.done = True
        finally:
            self.sender.shutdown(wait=True)

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self.sender.shutdown(wait=True, cancel_futures=True)
        if self.store.unreachable_since(self.started):
            return  # the service drops an untouched staging by itself
        with suppress(StorageUnavailable, SavesetMissing):
            self.store.request("DELETE", f"/stagings/{self.sid}", "abort")


class SegmentWriter:
    """A part being written: bytes gather into a segment; a full one goes out while the
    next fills; an error of the service comes back on the next write or on close."""

    def __init__(self, staging: RemoteStaging, part: str) -> None:
        self.staging, self.part = staging, part
        self.chunks: list[bytes | memoryview] = []
        self.size = 0
        self.offset = 0
        self.pending: deque[Future[None]] = deque()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Never more than SEGMENT_BYTES in a segment (the service refuses larger), however
        large one write is."""
        view = memoryview(data if isinstance(data, bytes) else bytes(data))  # kept: no copy
        while view:
            take = min(len(view), SEGMENT_BYTES - self.size)
            self.chunks.append(view[:take])
            self.size += take
            view = view[take:]
            if self.size >= SEGMENT_BYTES:
                self._ship()
        return len(data)

    def _ship(self) -> None:
        self._wait(IN_FLIGHT - 1)
        chunks, size, self.chunks, self.size = self.chunks, self.size, [], 0
        self.pending.append(self.staging.sender.submit(self.staging.send, self.part,
                                                       self.offset, chunks, size))
        self.offset += size

    def _wait(self, at_most: int = 0) -> None:
        """Until no more than ``at_most`` segments are still to be sent (their errors come
        up here)."""
        while len(self.pending) > at_most:
            self.pending.popleft().result()

    def flush(self) -> None:
        """Segments go out when full or on close."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.size or self.offset == 0:
            self._ship()
        self._wait()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.closed = True


def key_of(found: dict[str, str]) -> SavesetKey:
    return SavesetKey(found["pool"], found["medium"], found["saveset_id"])


def describe(exc: httpx.TransportError) -> str:
    kinds = {httpx.ConnectTimeout: "no answer within connect_timeout",
             httpx.ConnectError: "cannot connect", httpx.ReadTimeout: "stalled past io_timeout",
             httpx.WriteTimeout: "stalled past io_timeout",
             httpx.RemoteProtocolError: "connection broken"}
    what = next((text for kind, text in kinds.items() if isinstance(exc, kind)),
                "connection failed")
    return f"{what} ({exc})" if str(exc) else what


class RemoteStores(Mapping[str, Store]):
    """Every data store of the config, reached through its RDS's data service: through the
    interface chosen for it (``via``), else through the first interface of its RDS."""

    def __init__(self, settings: Settings, token: str,
                 via: dict[str, str | None] | None = None,
                 opened: dict[tuple[str, str], RemoteStore] | None = None) -> None:
        self.settings, self.token = settings, token
        self.chosen = via or {}
        self.opened = {} if opened is None else opened  # shared: connections are reused

    def via(self, store: str, interface: str | None) -> RemoteStores:
        """The same stores, with ``store`` reached through ``interface``."""
        return RemoteStores(self.settings, self.token, {**self.chosen, store: interface},
                            self.opened)

    def __getitem__(self, name: str) -> Store:
        config = self.settings.config
        store = next((s for s in config.data_stores if s.name == name), None)
        if store is None:
            raise KeyError(name)
        interface = config.interface_for(store.rds, self.chosen.get(name))
        if interface is None:
            raise StorageUnavailable(Reason.RDS_UNREACHABLE, f"data store {name}: RDS "
                                     f"{store.rds} has no interface to reach it through")
        if (name, interface.name) not in self.opened:
            self.opened[(name, interface.name)] = RemoteStore(name, self.endpoint(interface))
        return self.opened[(name, interface.name)]

    def endpoint(self, interface: Interface) -> Endpoint:
        data_path = self.settings.config.data_path
        scheme = "https" if data_path.tls else "http"
        host = f"[{interface.address}]" if ":" in interface.address else interface.address
        return Endpoint(
            url=f"{scheme}://{host}:{self.settings.config.port_of(interface)}",
            interface=interface.name, token=self.token,
            connect_timeout_s=data_path.connect_timeout.total_seconds(),
            io_timeout_s=data_path.io_timeout.total_seconds(),
            ca=self.settings.resolve(data_path.tls.ca) if data_path.tls else None)

    def __iter__(self) -> Iterator[str]:
        return iter(s.name for s in self.settings.config.data_stores)

    def __len__(self) -> int:
        return len(self.settings.config.data_stores)

    def close(self) -> None:
        for store in self.opened.values():
            store.close()


PROBE_TIMEOUT_S = 2.0


def probe(endpoint: Endpoint) -> bool:
    """Whether the data service answers on ``endpoint`` (any HTTP answer counts, a refused
    token too: the interface is up)."""
    quick = replace(endpoint, io_timeout_s=PROBE_TIMEOUT_S,
                    connect_timeout_s=min(endpoint.connect_timeout_s, PROBE_TIMEOUT_S))
    try:
        with quick.client() as http:
            http.get("/v1/ping")
    except httpx.HTTPError:
        return False
    return True


def probe_interfaces(settings: Settings, token: str) -> dict[tuple[str, str], bool]:
    """(RDS, interface) -> reachable, for every interface of the config, probed at once."""
    stores = RemoteStores(settings, token)
    targets = [(r.name, i) for r in settings.config.rds for i in r.interfaces]
    with ThreadPoolExecutor(max(1, min(16, len(targets)))) as pool:
        found = pool.map(lambda target: probe(stores.endpoint(target[1])), targets)
        return {(rds, i.name): ok for (rds, i), ok in zip(targets, found, strict=True)}


def reachable_stores(settings: Settings, token: str) -> dict[str, Store]:
    """Every data store as this host reaches it: a directory that is here (its marker is),
    else through its RDS's data service (first interface)."""
    remote = RemoteStores(settings, token)
    found: dict[str, Store] = {}
    for store in settings.config.data_stores:
        if store.s3 is not None:  # a bucket: reached directly, from any host with its keys
            found[store.name] = store_of(settings, store)
            continue
        local = path_store(settings, store)
        here = (local.root / MARKER).exists()
        served = bool(settings.config.rds_named(store.rds).interfaces)
        found[store.name] = local if here or not served else remote[store.name]
    return found
