"""The URL guard against real HTTP servers on this machine: a redirect from a trusted server
to a refused address, the size limit, the whole-fetch deadline against a slow server; and Veo
jobs whose image URL is forbidden, refused at submit or, when the URL changes its answer
after the check, ended by the worker before any provider call.

The test servers live on loopback, which the guard refuses: each test trusts exactly the
first server's host:port, so a hop to any other loopback port is refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from producer import InvalidRequestError, VideoRequest
from tests.integration.conftest import Stack
from videoqueue.job import ErrorCode, JobStatus
from videoqueue.urlcheck import check_image_url
from videoqueue.urlguard import (
    AllowList,
    FetchLimits,
    ForbiddenURLError,
    URLTimeoutError,
    URLTooLargeError,
    open_url,
)

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A real HTTP server on 127.0.0.1; `routes` by path, `hits` counts requests by path."""

    routes: dict[str, Route]
    hits: dict[str, int] = field(default_factory=dict)
    httpd: ThreadingHTTPServer | None = None

    @property
    def netloc(self) -> str:
        assert self.httpd is not None
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"http://{self.netloc}{path}"


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Route]], Server]]:
    servers: list[ThreadingHTTPServer] = []

    def start(routes: dict[str, Route]) -> Server:
        server = Server(routes)

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            do_GET = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        server.httpd = httpd
        servers.append(httpd)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return server

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def image(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", str(len(PNG)))
    handler.end_headers()
    if handler.command == "GET":
        handler.wfile.write(PNG)


def redirect_to(location: str, *, only_get: bool = False) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        if only_get and handler.command != "GET":
            image(handler)
            return
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def endless(handler: BaseHTTPRequestHandler) -> None:
    # No Content-Length: the body ends when the connection closes, so only counting the
    # bytes read can stop it.
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    handler.close_connection = True
    try:
        for _ in range(1024):
            handler.wfile.write(PNG + bytes(64 * 1024))
    except OSError:
        pass  # the client stopped reading, as it should


def dripping(handler: BaseHTTPRequestHandler) -> None:
    # A byte every 0.2 s: no single read ever waits long, only a deadline over the whole
    # fetch stops it.
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", "600")
    handler.end_headers()
    try:
        for _ in range(600):
            handler.wfile.write(b"\x00")
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass


def dripping_headers(handler: BaseHTTPRequestHandler) -> None:
    # The status line, then a header a byte every 0.2 s: the answer never starts.
    try:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: ")
        for _ in range(600):
            handler.wfile.write(b"z")
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass
    handler.close_connection = True


def host_header(handler: BaseHTTPRequestHandler) -> None:
    body = (handler.headers.get("Host") or "").encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


LIMITS = FetchLimits(max_bytes=1024 * 1024, timeout_s=10)


def fetch(url: str, allow: AllowList, limits: FetchLimits = LIMITS) -> bytes:
    with open_url(url, allow, limits) as response:
        return response.read()


def test_a_redirect_from_a_trusted_server_to_another_loopback_port_is_refused(serve: Callable[..., Server]) -> None:
    inner = serve({"/secret.png": image})
    outer = serve(
        {
            "/here.png": redirect_to("/real.png"),
            "/real.png": image,
            "/away.png": redirect_to(inner.url("/secret.png")),
        }
    )
    allow = AllowList.parse(outer.netloc)
    assert fetch(outer.url("/here.png"), allow) == PNG  # a redirect on the trusted server is followed
    assert fetch(inner.url("/secret.png"), AllowList.parse(inner.netloc)) == PNG  # the target itself answers

    with pytest.raises(ForbiddenURLError, match=r"leads to 127\.0\.0\.1, a loopback address"):
        fetch(outer.url("/away.png"), allow)
    assert inner.hits == {"/secret.png": 1}  # only the direct fetch above reached it


def test_a_redirect_to_the_metadata_address_is_refused_by_the_producer_check(serve: Callable[..., Server]) -> None:
    outer = serve({"/cat.png": redirect_to("http://169.254.169.254/latest/meta-data/iam/")})
    with pytest.raises(ForbiddenURLError, match=r"169\.254\.169\.254, a cloud metadata address"):
        check_image_url(outer.url("/cat.png"), AllowList.parse(outer.netloc))
    with pytest.raises(ForbiddenURLError, match="cloud metadata"):
        fetch(outer.url("/cat.png"), AllowList.parse(outer.netloc))


def test_redirects_are_bounded(serve: Callable[..., Server]) -> None:
    outer = serve({"/loop.png": redirect_to("/loop.png")})
    with pytest.raises(ForbiddenURLError, match="redirects more than 5 times"):
        fetch(outer.url("/loop.png"), AllowList.parse(outer.netloc))
    assert outer.hits == {"/loop.png": 6}


def test_the_size_limit_counts_bytes_read_not_the_announced_length(serve: Callable[..., Server]) -> None:
    outer = serve({"/huge.png": endless, "/small.png": image})
    allow = AllowList.parse(outer.netloc)
    limits = FetchLimits(max_bytes=256 * 1024, timeout_s=30)
    assert fetch(outer.url("/small.png"), allow, limits) == PNG
    with pytest.raises(URLTooLargeError, match="is over 262144 bytes"):
        fetch(outer.url("/huge.png"), allow, limits)


def test_the_deadline_holds_for_the_whole_fetch_against_a_slow_server(serve: Callable[..., Server]) -> None:
    outer = serve({"/slow.png": dripping})
    allow = AllowList.parse(outer.netloc)
    # Each byte comes within 0.2 s, so a per-read timeout of 1 s would wait out all 120 s.
    with pytest.raises(URLTimeoutError, match="did not answer within 1 s"):
        fetch(outer.url("/slow.png"), allow, FetchLimits(max_bytes=1024, timeout_s=1))


def test_the_deadline_holds_while_the_headers_trickle_in(serve: Callable[..., Server]) -> None:
    outer = serve({"/slow-headers.png": dripping_headers})
    with pytest.raises(URLTimeoutError, match="did not answer within 1 s"):
        fetch(outer.url("/slow-headers.png"), AllowList.parse(outer.netloc), FetchLimits(max_bytes=1024, timeout_s=1))


def test_a_name_is_fetched_at_the_address_checked_with_its_own_host_header(serve: Callable[..., Server]) -> None:
    outer = serve({"/host": host_header})
    port = outer.netloc.rsplit(":", 1)[1]
    # localhost resolves to loopback only: refused unless trusted, by name or by address.
    with pytest.raises(ForbiddenURLError, match="a loopback address"):
        fetch(f"http://localhost:{port}/host", AllowList())
    assert fetch(f"http://localhost:{port}/host", AllowList.parse(f"localhost:{port}")) == f"localhost:{port}".encode()
    assert fetch(f"http://localhost:{port}/host", AllowList.parse("127.0.0.0/8, ::1")) == f"localhost:{port}".encode()


def test_a_veo_job_whose_image_url_is_forbidden_is_refused_at_submit(local_stack: Stack) -> None:
    vq = local_stack.queue()  # trusts 127.0.0.1, as the whole suite does: not 169.254.0.0/16
    url = "http://169.254.169.254/computeMetadata/v1/instance/first.png"
    with pytest.raises(InvalidRequestError) as info:
        vq.submit(VideoRequest(prompt="a fox", provider="veo", image_url=url))
    assert info.value.problems["image_url"].startswith(f"{url} leads to 169.254.169.254, a cloud metadata address")
    assert vq.list() == []
    assert local_stack.simulator.stats()["creates_total"] == 0


def test_a_worker_ends_a_veo_job_whose_image_url_turned_forbidden_without_calling_the_provider(
    local_stack: Stack, serve: Callable[..., Server]
) -> None:
    # The producer's check (HEAD) sees an image; the worker's GET is sent to the metadata
    # address: a URL that changed its answer between submit and fetch.
    server = serve({"/first.png": redirect_to("http://169.254.169.254/latest/meta-data/", only_get=True)})
    local_stack.start_worker(FETCH_ALLOW_HOSTS=server.netloc)
    vq = local_stack.queue(fetch_allow_hosts=server.netloc)
    job = vq.submit(VideoRequest(prompt="a fox", provider="veo", image_url=server.url("/first.png")))
    assert server.hits == {"/first.png": 1}  # the check at submit

    done = vq.wait([job.id], timeout=60)[0]

    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.code is ErrorCode.INVALID_REQUEST
    assert "169.254.169.254, a cloud metadata address" in done.error.message
    assert server.hits == {"/first.png": 2}  # one fetch by the worker: not retried
    assert local_stack.simulator.stats()["creates_total"] == 0
    assert done.cost_usd in (None, 0)
