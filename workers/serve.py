"""Running an RDS's data service: its stores and tokens from the settings, one listening
socket per interface of the RDS, TLS when the config asks for it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from backstop.config import Interface
from backstop.errors import BackstopError
from backstop.settings import Settings
from backstop.workers.access import SEGMENT_BYTES, Identity, Tokens, fleet_token, read_token
from backstop.workers.dataservice import RECEIVE_CHUNK, DataService
from backstop.workers.engine import store_of

log = logging.getLogger(__name__)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def service_tokens(settings: Settings, rds: str) -> Tokens:
    """The fleet token, and each client's own token with the tasks it may reach."""
    interfaces = settings.config.rds_named(rds).interfaces
    exposed = [i.address for i in interfaces if not is_loopback(i.address)]
    if exposed and not settings.data_token and not settings.data_token_file.exists():
        raise BackstopError(f"refusing to serve RDS {rds} on {', '.join(exposed)} without "
                            f"a data token: create {settings.data_token_file} (mode 0600) "
                            "or set BACKSTOP_DATA_TOKEN")
    clients = []
    for client in settings.config.clients:
        if client.token_file is None:
            continue
        tasks = frozenset(t.name for t in settings.config.tasks if t.client == client.name)
        try:
            token = read_token(settings.resolve(client.token_file))
        except BackstopError as exc:
            log.warning("client %s cannot authenticate: %s", client.name, exc)
            continue
        clients.append((token, Identity(client.name, tasks)))
    return Tokens(fleet_token(settings, create=not exposed), tuple(clients))


def listening_socket(address: str, port: int) -> socket.socket:
    """A non-blocking socket listening on ``address:port`` (closed again if that fails:
    tornado's ``bind_sockets`` leaves the socket of a failed bind open)."""
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((address, port), family=family, backlog=128)
    sock.setblocking(False)
    return sock


def server_tls(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.config.data_path.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.resolve(tls.cert)), str(settings.resolve(tls.key)))
    return context


def service_for(settings: Settings, rds: str) -> DataService:
    stores = {s.name: store_of(settings, s) for s in settings.config.data_stores
              if s.rds == rds}
    timeout = settings.config.data_path.io_timeout.total_seconds()
    return DataService(stores, service_tokens(settings, rds), timeout)


@dataclass
class Listening:
    """A data service with its sockets bound, on an event loop of its own thread."""

    settings: Settings
    rds: str
    service: DataService
    loop: IOLoop | None = None
    server: HTTPServer | None = None
    thread: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None
    stopped: asyncio.Event | None = None

    def interfaces(self) -> list[Interface]:
        return self.settings.config.rds_named(self.rds).interfaces

    def _bind(self) -> None:
        self.server = HTTPServer(
            self.service.application(), ssl_options=server_tls(self.settings),
            max_body_size=SEGMENT_BYTES + (1 << 20), chunk_size=RECEIVE_CHUNK,
            idle_connection_timeout=self.settings.config.data_path.io_timeout.total_seconds())
        for interface in self.interfaces():
            port = self.settings.config.port_of(interface)
            try:
                self.server.add_sockets([listening_socket(interface.address, port)])
            except OSError as exc:
                raise OSError(exc.errno, f"{interface.address}:{port} (interface "
                              f"{interface.name}): {exc.strerror or exc}") from exc
            log.info("RDS %s: data service on %s:%d (interface %s)", self.rds,
                     interface.address, port, interface.name)
        self.service.start()

    def run(self) -> None:
        """Serve in this thread until :meth:`stop`."""
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = IOLoop.current()
        self.stopped = asyncio.Event()
        try:
            self._bind()
        except BaseException as exc:
            self.failure = exc
            self.ready.set()
            return
        self.ready.set()
        await self.stopped.wait()
        assert self.server is not None
        self.server.stop()
        await self.server.close_all_connections()
        self.service.stop()

    def start(self) -> Listening:
        """Serve from a thread; returns once every socket is bound (or raises why not)."""
        self.thread = threading.Thread(target=self.run, name=f"serve-{self.rds}", daemon=True)
        self.thread.start()
        self.ready.wait()
        if self.failure is not None:
            raise self.failure
        return self

    def stop(self) -> None:
        if self.loop is not None and self.stopped is not None:
            self.loop.add_callback(self.stopped.set)
        if self.thread is not None:
            self.thread.join(timeout=30)


def serve_forever(settings: Settings, rds: str) -> None:
    """``backstop serve``: serve until SIGTERM or SIGINT, then drop open stagings."""
    listening = Listening(settings, rds, service_for(settings, rds))
    stop = threading.Event()

    def stopping(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    listening.start()
    stop.wait()
    listening.stop()
