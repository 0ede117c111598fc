"""A webhook receiver for tests: an HTTP server on loopback that keeps what is posted."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """An HTTP server on loopback that keeps every POST: (path, JSON body)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str, about: str = "") -> list[dict[str, Any]]:
        """The messages posted to ``path`` that mention ``about`` (an occurrence, an event)."""
        return [body for p, body in self.got if p == path and about in json.dumps(body)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
