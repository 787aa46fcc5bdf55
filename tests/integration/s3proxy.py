"""An HTTP proxy in front of moto's S3 server that behaves like the S3-compatible stores of
issue 12 (Backblaze B2, OVH, Qumulo): any request carrying boto3's checksum headers
(`x-amz-checksum-*`, `x-amz-sdk-checksum-algorithm`) is answered 400 InvalidArgument
"Unsupported header"; everything else is forwarded to moto as it came (Host header and
signature included) and moto's answer is passed back.

A threaded `http.server` on 127.0.0.1; it speaks HTTP/1.1 with keep-alive like a real
store, and answers `Expect: 100-continue` itself, refusing before the body is sent as a
real store does."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "te", "trailer", "upgrade"}


def checksum_headers(headers: list[tuple[str, str]]) -> list[str]:
    """The checksum headers boto3 1.36+ adds, among `headers`."""
    return sorted(
        name.lower()
        for name, _ in headers
        if name.lower().startswith("x-amz-checksum-") or name.lower() == "x-amz-sdk-checksum-algorithm"
    )


def refusal_body(header: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error><Code>InvalidArgument</Code>"
        f"<Message>Unsupported header '{header}' received for this API call.</Message>"
        "<RequestId>proxy</RequestId></Error>"
    ).encode()


@dataclass
class ProxyLog:
    """What went through the proxy: forwarded requests and refused ones (method, path, headers)."""

    forwarded: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(upstream: str, log: ProxyLog) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _refuse(self, found: list[str]) -> None:
            with log.lock:
                log.refused.append((self.command, self.path, found))
            body = refusal_body(found[0])
            self.send_response(400)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.close_connection = True

        def handle_expect_100(self) -> bool:
            found = checksum_headers(list(self.headers.items()))
            if found:
                self._refuse(found)
                return False
            return super().handle_expect_100()

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self) -> None:
            body = self._body()
            found = checksum_headers(list(self.headers.items()))
            if found:
                self._refuse(found)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in {"PUT", "POST"}:
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                answer = conn.getresponse()
                data = answer.read()
            finally:
                conn.close()
            with log.lock:
                log.forwarded.append((self.command, self.path))
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", answer.getheader("Content-Length") or "0")
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler


@contextmanager
def checksum_refusing_proxy(upstream: str) -> Iterator[tuple[str, ProxyLog]]:
    """Run the proxy in front of `upstream` (moto's endpoint); yields its URL and its log."""
    log = ProxyLog()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, log))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
