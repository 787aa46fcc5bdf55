"""One guard for every URL fetched on a user's behalf (image URLs): no request to an
internal address (server-side request forgery).

`open_url` resolves the host, refuses the URL if any address it resolves to is loopback,
private, link-local, shared (CGNAT), unique-local, unspecified, multicast, reserved,
documentation or cloud metadata -- also when written as an IPv4-mapped, IPv4-compatible,
6to4, Teredo or NAT64 IPv6 address -- and then connects to the very address it checked (no
second lookup, so no DNS-rebinding gap), with the URL's host in the Host header and in TLS
(SNI and certificate check). It follows redirects itself, at most `max_redirects`, checking
every hop the same way; counts the bytes it reads against `max_bytes` (whatever
Content-Length says) and holds the whole fetch, redirects included, to one deadline of
`timeout_s` seconds (the name lookups excepted: the system resolver bounds those with its
own timeouts). Proxies from the environment are not used: a proxy would resolve the
name itself, after the check.

`AllowList` (the FETCH_ALLOW_HOSTS setting) names trusted internal hosts: host names, IPs
and CIDR ranges, each optionally with a port.

Standard library only: producers install no HTTP client (httpx is a worker extra), and the
producer's check at submit and the worker's fetch must apply the same rules. No library
fits: advocate (requests) is unmaintained; safehttpx, httpx-secure and drawbridge guard
httpx's AsyncClient only, and the producer cannot use httpx at all.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from videoqueue.errors import InvalidSettingsError
from videoqueue.errors import URLFetchError as URLFetchError  # noqa: PLC0414 - re-export

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
READ_CHUNK = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud metadata services, named apart so that the error says what was aimed at. Most lie in
# a range refused anyway (link-local, unique-local, CGNAT); 192.0.0.192 is Oracle's.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)

# The ranges refused, each named as the error says it ("a loopback" address); the first match names it.
_REFUSED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified ('this network')"),
    ("127.0.0.0/8", "a loopback"),
    ("10.0.0.0/8", "a private"),
    ("172.16.0.0/12", "a private"),
    ("192.168.0.0/16", "a private"),
    ("169.254.0.0/16", "a link-local"),
    ("100.64.0.0/10", "a shared (CGNAT)"),
    ("192.0.0.0/24", "an IETF-reserved"),
    ("192.0.2.0/24", "a documentation"),
    ("198.51.100.0/24", "a documentation"),
    ("203.0.113.0/24", "a documentation"),
    ("198.18.0.0/15", "a benchmarking"),
    ("224.0.0.0/4", "a multicast"),
    ("240.0.0.0/4", "a reserved"),  # 255.255.255.255 (broadcast) included
    ("::/128", "an unspecified"),
    ("::1/128", "a loopback"),
    ("fe80::/10", "a link-local"),
    ("fec0::/10", "a site-local"),
    ("fc00::/7", "a unique-local"),
    ("ff00::/8", "a multicast"),
    ("100::/64", "a discard-only"),
    ("2001:db8::/32", "a documentation"),
    ("3fff::/20", "a documentation"),
    ("64:ff9b:1::/48", "a local-use NAT64"),
    ("2001:10::/28", "a reserved (ORCHID)"),
    ("2001:2::/48", "a benchmarking"),
)
_REFUSED_NETS: tuple[tuple[IPNetwork, str], ...] = tuple((ipaddress.ip_network(n), why) for n, why in _REFUSED)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


# -- errors (their branch base, URLFetchError, is in videoqueue.errors) ---------------------------


class ForbiddenURLError(URLFetchError, ValueError):
    """A URL (or a redirect from it) that leads to an address the guard refuses; nothing
    was sent to it. Not worth retrying: the input is at fault."""


class URLTooLargeError(URLFetchError, ValueError):
    """The body is larger than the limit; reading stopped there."""


class URLTimeoutError(URLFetchError, TimeoutError):
    """The fetch, redirects included, did not finish within its deadline."""


class URLStatusError(URLFetchError):
    """The server answered an HTTP error (`status`, 400-599)."""

    def __init__(self, url: str, status: int) -> None:
        self.url, self.status = url, status
        super().__init__(f"{url} answers HTTP {status}")


class AllowListError(InvalidSettingsError):
    """An entry of FETCH_ALLOW_HOSTS that is not a host, host:port, IP or CIDR."""


# -- addresses -----------------------------------------------------------------------------------


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, 6to4, Teredo, NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address; the server's is public by design
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_metadata(address: IPAddress) -> bool:
    """Is `address` a cloud metadata address, also in IPv6 form? No allow-list entry
    trusts one: a range trusted for its internal hosts must not open the instance's
    credentials."""
    if address in METADATA_ADDRESSES:
        return True
    inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    return inner is not None and inner in METADATA_ADDRESSES


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be fetched from (e.g. "a loopback address"), or None if it is
    a public address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) address"
        inner = _embedded_ipv4(address)
        if inner is not None:
            why = refusal(inner)
            return f"{why} in IPv6 form ({inner})" if why else None
    for network, why in _REFUSED_NETS:
        if address.version == network.version and address in network:
            return f"{why} address"
    if not address.is_global:
        return "not a public address"
    return None


# -- the allow-list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowList:
    """Trusted internal hosts: `hosts` (lower-case names) and `networks` (IPs as /32 or
    /128, CIDR ranges), each with a port or None for any port."""

    hosts: frozenset[tuple[str, int | None]] = frozenset()
    networks: tuple[tuple[IPNetwork, int | None], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> AllowList:
        """Entries comma separated: `name`, `name:port`, `10.0.0.5`, `10.0.0.5:9000`,
        `10.0.0.0/8`, `fd00::/8`, `[fd00::1]:9000`. Raises AllowListError naming a bad one."""
        hosts: set[tuple[str, int | None]] = set()
        networks: list[tuple[IPNetwork, int | None]] = []
        for raw in (text or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            if "://" in entry:
                raise AllowListError(f"FETCH_ALLOW_HOSTS: {entry!r} is a URL: give its host, or host:port")
            target, port = _split_port(entry)
            try:
                networks.append((ipaddress.ip_network(target, strict=False), port))
                continue
            except ValueError:
                pass
            name = target.lower().rstrip(".")
            if not _HOST_NAME.fullmatch(name):
                raise AllowListError(f"FETCH_ALLOW_HOSTS: {entry!r} is not a host, host:port, IP or CIDR")
            hosts.add((name, port))
        return cls(frozenset(hosts), tuple(networks))

    def trusts_host(self, host: str, port: int) -> bool:
        """Is the host name `host` (as the URL spells it) trusted on `port`?"""
        name = host.lower().rstrip(".")
        return (name, None) in self.hosts or (name, port) in self.hosts

    def trusts_address(self, address: IPAddress, port: int) -> bool:
        """Is `address` within a trusted network on `port`?"""
        return any(
            address.version == net.version and address in net and wanted in (None, port)
            for net, wanted in self.networks
        )

    def __bool__(self) -> bool:
        return bool(self.hosts or self.networks)


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port or [v6]
        inner, _, rest = entry[1:].partition("]")
        return inner, _port(entry, rest.removeprefix(":")) if rest else None
    if entry.count(":") == 1:  # host:port or v4:port (a bare IPv6 address has several)
        host, _, port = entry.partition(":")
        return host, _port(entry, port)
    return entry, None


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise AllowListError(f"FETCH_ALLOW_HOSTS: {entry!r} has no valid port")
    return int(text)


# -- checking a URL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where one URL leads: `host` and `port` as the URL says, and the checked addresses
    to connect to, in resolver order."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def _parts(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ForbiddenURLError(f"{url} is not an http(s) URL")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ForbiddenURLError(f"{url} has an invalid port") from exc
    if not host:
        raise ForbiddenURLError(f"{url} names no host")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenURLError(f"{url} carries credentials; give a URL without user:password@")
    return scheme, host, port or DEFAULT_PORTS[scheme]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_literal(url: str, allow: AllowList) -> None:
    """The check that needs no network: refuse `url` if it is not http(s) or its host is an
    IP literal (or `localhost`) the guard refuses. Raises ForbiddenURLError."""
    _, host, port = _parts(url)
    address = _literal(host)
    if address is None and host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        address = ipaddress.ip_address("127.0.0.1")
    if address is None:
        return
    if is_metadata(address) or not (allow.trusts_host(host, port) or allow.trusts_address(address, port)):
        why = refusal(address)
        if why:
            raise ForbiddenURLError(_forbidden(url, address, why))


def resolve(url: str, allow: AllowList) -> Target:
    """Resolve `url`'s host and check every address it gives. Raises ForbiddenURLError when
    any address is refused (a name giving a public and a private address is refused whole),
    URLFetchError when the name does not resolve. The lookup is the system resolver's,
    bounded by its own timeouts, not by a fetch's deadline."""
    scheme, host, port = _parts(url)
    literal = _literal(host)
    if literal is not None:
        found: list[IPAddress] = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise URLFetchError(f"{url} is unreachable (cannot resolve {host}: {exc})") from exc
        found = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if address not in found:
                found.append(address)
    trusted_name = allow.trusts_host(host, port)
    for address in found:
        if not is_metadata(address) and (trusted_name or allow.trusts_address(address, port)):
            continue
        why = refusal(address)
        if why:
            raise ForbiddenURLError(_forbidden(url, address, why))
    if not found:
        raise URLFetchError(f"{url} is unreachable ({host} has no address)")
    return Target(scheme, host, port, tuple(found))


def _forbidden(url: str, address: IPAddress, why: str) -> str:
    return (
        f"{url} leads to {address}, {why}: not fetched (an operator can trust an internal host with FETCH_ALLOW_HOSTS)"
    )


# -- fetching ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchLimits:
    """Limits of one fetch: at most `max_bytes` of body, the whole fetch (every hop, every
    read) within `timeout_s` seconds, at most `max_redirects` redirects; `connect_timeout_s`
    caps each connection attempt within that."""

    max_bytes: int
    timeout_s: float
    max_redirects: int = MAX_REDIRECTS
    connect_timeout_s: float = 10.0


class _Deadline:
    """One fetch's deadline. Socket timeouts bound each operation only (a server sending a
    byte at a time never trips them), so a timer also shuts the socket being read down
    when the deadline passes, which ends any read in progress."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.at = time.monotonic() + timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds left; raises URLTimeoutError when none are."""
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise self.error()
        return remaining

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def error(self) -> URLTimeoutError:
        return URLTimeoutError(f"{self.url} did not answer within {self.timeout_s:g} s")

    def watch(self, sock: socket.socket | None) -> None:
        """The socket to shut down at the deadline (the current hop's)."""
        with self._lock:
            self._sock = sock

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to `address`, whatever the host name would resolve to now; the TCP socket is
    handed to `deadline` as soon as it exists."""

    def __init__(self, host: str, port: int, address: IPAddress, timeout: float, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address, self.deadline = address, deadline

    def _tcp(self) -> socket.socket:
        sock = socket.create_connection((str(self.address), self.port), self.timeout)
        self.deadline.watch(sock)
        return sock

    def connect(self) -> None:
        self.sock = self._tcp()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection, http.client.HTTPSConnection):
    """HTTPS to `address`, with the URL's host name for SNI and the certificate check."""

    def __init__(self, host: str, port: int, address: IPAddress, timeout: float, deadline: _Deadline) -> None:
        http.client.HTTPSConnection.__init__(self, host, port, timeout=timeout, context=ssl.create_default_context())
        self.address, self.deadline = address, deadline

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(self._tcp(), server_hostname=self.host)  # type: ignore[attr-defined]


@dataclass
class Response:
    """An open answer (below 400, not a redirect): `url` after redirects,
    `status`, `headers`. `chunks()` yields the body, bounded by the fetch's limits."""

    url: str
    status: int
    headers: http.client.HTTPMessage
    _response: http.client.HTTPResponse
    _connection: http.client.HTTPConnection
    _limits: FetchLimits
    _deadline: _Deadline
    read_bytes: int = field(default=0)

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives. Raises URLTooLargeError past `max_bytes`,
        URLTimeoutError past the deadline, URLFetchError if the connection breaks."""
        limit = self._limits.max_bytes
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise URLTooLargeError(f"{self.url} is over {limit} bytes (Content-Length {length})")
        while True:
            self._settimeout(self._deadline.left())
            try:
                chunk = self._response.read1(READ_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                if self._deadline.passed():
                    raise self._deadline.error() from exc
                raise URLFetchError(f"{self.url} broke off ({exc!r})") from exc
            if not chunk:
                if self._deadline.passed():  # the socket was shut down: the end is not the body's
                    raise self._deadline.error()
                if length and length.isdigit() and self.read_bytes < int(length):
                    raise URLFetchError(f"{self.url} broke off after {self.read_bytes} of {length} bytes")
                return
            self.read_bytes += len(chunk)
            if self.read_bytes > limit:
                raise URLTooLargeError(f"{self.url} is over {limit} bytes")
            yield chunk

    def read(self) -> bytes:
        """The whole body, within the limits (see `chunks`)."""
        return b"".join(self.chunks())

    def _settimeout(self, seconds: float) -> None:
        if self._connection.sock is not None:
            self._connection.sock.settimeout(seconds)


@contextmanager
def open_url(
    url: str,
    allow: AllowList,
    limits: FetchLimits,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Iterator[Response]:
    """Open `url` through the guard and yield its final answer (redirects followed, each hop
    checked; `body` is sent with the first request only: a POST is not followed, give it
    `max_redirects=0`). An HTTP error status (400-599) raises URLStatusError; a refused address,
    scheme or redirect target ForbiddenURLError; too many redirects ForbiddenURLError;
    timeouts URLTimeoutError; network failures URLFetchError. The connection is closed on exit."""
    deadline = _Deadline(url, limits.timeout_s)
    try:
        current = url
        verb = method
        for _hop in range(limits.max_redirects + 1):
            target = resolve(current, allow)
            connection, response = _request(
                current, target, verb, headers=headers, limits=limits, deadline=deadline, body=body
            )
            location = response.getheader("Location") if response.status in REDIRECT_STATUSES else None
            if location is None:
                try:
                    if response.status >= 400:
                        raise URLStatusError(current, response.status)
                    yield Response(current, response.status, response.headers, response, connection, limits, deadline)
                finally:
                    connection.close()
                return
            connection.close()
            current = urljoin(current, location.strip())
            if response.status == 303 and verb != "HEAD":
                verb = "GET"
            body = None
        raise ForbiddenURLError(f"{url} redirects more than {limits.max_redirects} times")
    finally:
        deadline.cancel()


def _request(
    url: str,
    target: Target,
    method: str,
    *,
    headers: dict[str, str] | None,
    limits: FetchLimits,
    deadline: _Deadline,
    body: bytes | None = None,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    failure: Exception | None = None
    for address in target.addresses:
        connection = kind(target.host, target.port, address, min(limits.connect_timeout_s, deadline.left()), deadline)
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(deadline.left())
            connection.request(method, path, body=body, headers={"Accept-Encoding": "identity", **(headers or {})})
            connection.sock.settimeout(deadline.left())
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            if deadline.passed():
                raise deadline.error() from exc
            failure = exc
    reason = failure.strerror if isinstance(failure, OSError) and failure.strerror else repr(failure)
    raise URLFetchError(f"{url} is unreachable ({reason})") from failure
