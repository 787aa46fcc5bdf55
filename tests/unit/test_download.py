"""Video downloads against local HTTP servers that encode, omit or cut the body (issue 12).

Each server is a real HTTP/1.1 server on 127.0.0.1; the download goes through the worker's
own `stream_url` and, where the store path matters, into `LocalStorage.put_video`, which
runs the size and MP4 checks."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from videoqueue.job import ErrorCode
from worker.download import stream_url
from worker.providers.base import ProviderError
from worker.storage.local import LocalStorage

SAMPLE = Path(__file__).resolve().parents[2] / "simulator" / "assets" / "sample.mp4"
VIDEO = SAMPLE.read_bytes()
GZIPPED = gzip.compress(VIDEO)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen_accept_encoding: list[str | None] = []  # noqa: RUF012 - shared by the test server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, body: bytes, headers: dict[str, str], cut_at: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body if cut_at is None else body[:cut_at])
        self.wfile.flush()
        if cut_at is not None or "Content-Length" not in headers:
            # Close-delimited body, or a stream cut short: the connection ends here.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        Handler.seen_accept_encoding.append(self.headers.get("Accept-Encoding"))
        half = len(GZIPPED) // 2
        routes = {
            # What the field report saw: gzip whatever was asked, Content-Length of the gzip.
            "/gzip": lambda: self._send(GZIPPED, {"Content-Encoding": "gzip", "Content-Length": str(len(GZIPPED))}),
            "/x-gzip-no-length": lambda: self._send(GZIPPED, {"Content-Encoding": "x-gzip"}),
            "/identity-encoding": lambda: self._send(
                VIDEO, {"Content-Encoding": "identity", "Content-Length": str(len(VIDEO))}
            ),
            "/plain": lambda: self._send(VIDEO, {"Content-Length": str(len(VIDEO))}),
            "/no-length": lambda: self._send(VIDEO, {}),
            "/cut": lambda: self._send(VIDEO, {"Content-Length": str(len(VIDEO))}, cut_at=len(VIDEO) // 2),
            "/gzip-cut": lambda: self._send(
                GZIPPED, {"Content-Encoding": "gzip", "Content-Length": str(len(GZIPPED))}, cut_at=half
            ),
            "/gzip-cut-no-length": lambda: self._send(GZIPPED, {"Content-Encoding": "gzip"}, cut_at=half),
            "/gzip-not-gzip": lambda: self._send(
                VIDEO, {"Content-Encoding": "gzip", "Content-Length": str(len(VIDEO))}
            ),
        }
        routes[self.path]()


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def store(client: httpx.Client, url: str, root: Path) -> int:
    """Download `url` into local storage as the store step does; the stored size."""
    with stream_url(client, url) as stream:
        return LocalStorage(root).put_video("job.mp4", stream.chunks, stream.size).size


def test_videos_are_asked_for_unencoded(host: str, client: httpx.Client, tmp_path: Path) -> None:
    Handler.seen_accept_encoding.clear()
    store(client, f"{host}/plain", tmp_path)
    with stream_url(client, f"{host}/plain", headers={"Authorization": "Bearer x", "Accept-Encoding": "gzip"}):
        pass
    assert Handler.seen_accept_encoding == ["identity", "identity"]


@pytest.mark.parametrize("path", ["/gzip", "/x-gzip-no-length"])
def test_a_gzipped_video_is_checked_and_stored_decoded(
    host: str, client: httpx.Client, tmp_path: Path, path: str
) -> None:
    # Before: VideoCheckError "more bytes than the announced <gzip size>" on every attempt.
    with stream_url(client, f"{host}{path}") as stream:
        assert stream.size is None  # the Content-Length (if any) is the gzip's, not the video's
    assert store(client, f"{host}{path}", tmp_path) == len(VIDEO)
    assert (tmp_path / "job.mp4").read_bytes() == VIDEO


@pytest.mark.parametrize("path", ["/plain", "/identity-encoding"])
def test_an_unencoded_video_keeps_its_announced_size(host: str, client: httpx.Client, path: str) -> None:
    with stream_url(client, f"{host}{path}") as stream:
        assert stream.size == len(VIDEO)
        assert b"".join(stream.chunks) == VIDEO


def test_a_video_without_content_length_is_stored(host: str, client: httpx.Client, tmp_path: Path) -> None:
    with stream_url(client, f"{host}/no-length") as stream:
        assert stream.size is None
    assert store(client, f"{host}/no-length", tmp_path) == len(VIDEO)
    assert (tmp_path / "job.mp4").read_bytes() == VIDEO


@pytest.mark.parametrize("path", ["/cut", "/gzip-cut", "/gzip-cut-no-length"])
def test_a_stream_cut_short_is_a_retryable_error_and_stores_nothing(
    host: str, client: httpx.Client, tmp_path: Path, path: str
) -> None:
    with pytest.raises(ProviderError) as info:
        store(client, f"{host}{path}", tmp_path)
    assert info.value.retryable, info.value
    assert info.value.code is ErrorCode.TIMEOUT
    assert list(tmp_path.iterdir()) == []


def test_a_body_that_says_gzip_but_is_not_is_a_retryable_error(host: str, client: httpx.Client, tmp_path: Path) -> None:
    with pytest.raises(ProviderError) as info:
        store(client, f"{host}/gzip-not-gzip", tmp_path)
    assert info.value.retryable and "gzip" in info.value.message
    assert list(tmp_path.iterdir()) == []
