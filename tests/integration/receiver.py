"""A webhook receiver for tests: a real HTTP server on loopback (http.server in a thread)
that keeps every request it gets and answers with the status the test sets (or is not
listening at all while "down")."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from simulator.stack import free_port


@dataclass
class Received:
    """One request as it arrived: its headers (lower-case names) and its raw body."""

    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Listens on 127.0.0.1:`port` between `start` and `stop`; answers `status`, or each
    request's status from `decide` (its position, from 0) when set."""

    port: int = field(default_factory=free_port)
    status: int = 200
    decide: object = None
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with owner._lock:
                    position = len(owner.received)
                    owner.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                status = owner.decide(position) if callable(owner.decide) else owner.status
                self.send_response(int(status))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
