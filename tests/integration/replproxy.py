"""A TCP proxy for a Redis replica's link to its primary that can be made to drop the
replication stream: what a replica behind on a slow or broken network sees. The replica
is started with `--replicaof 127.0.0.1 <proxy port>`; the proxy forwards both ways to the
primary until `hold()`, after which whatever the primary sends is read and thrown away
(the primary's acknowledged writes never reach the replica, and the replica's ACKs stop
moving, so a WAIT waits). `close()` ends it for good.

Threads on plain sockets, 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import socket
import threading


class ReplicationProxy:
    """Listens on `port` (a free one) and forwards each connection to 127.0.0.1:`upstream`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._held = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self.dropped_bytes = 0
        threading.Thread(target=self._accept, name="replproxy-accept", daemon=True).start()

    def hold(self) -> None:
        """From now on, drop what the primary sends."""
        self._held.set()

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            if self._held.is_set():  # a replica reconnecting after the hold gets nothing
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_primary: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            if self._held.is_set():
                if from_primary:
                    self.dropped_bytes += len(data)
                continue
            try:
                target.sendall(data)
            except OSError:
                return
