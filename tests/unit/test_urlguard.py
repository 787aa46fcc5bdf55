"""The URL guard's rules (videoqueue.urlguard): every kind of internal address refused, in
IPv4 and IPv6 forms, also behind a name; the allow-list; the producer's and the worker's
errors. Real servers, redirects and limits: tests/integration/test_urlguard.py."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import fakeredis
import pytest
from pydantic import ValidationError

from producer import InvalidRequestError, Settings, VideoQueue, VideoRequest
from videoqueue import jobstore
from videoqueue.errors import InvalidSettingsError, URLFetchError
from videoqueue.job import ErrorCode
from videoqueue.settings import load_settings
from videoqueue.urlguard import AllowList, AllowListError, ForbiddenURLError, check_literal, refusal, resolve
from worker.download import fetch_image
from worker.providers.base import ProviderError

REFUSED = [
    # (address, words of the refusal)
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("100.127.255.254", "shared (CGNAT)"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("fec0::1", "site-local"),
    ("100::1", "discard-only"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    # Cloud metadata services, named as such.
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("192.0.0.192", "cloud metadata"),
    # IPv4 inside IPv6: mapped, compatible, NAT64, 6to4, Teredo.
    ("::ffff:127.0.0.1", "loopback address in IPv6 form (127.0.0.1)"),
    ("::ffff:10.0.0.1", "private address in IPv6 form"),
    ("::ffff:169.254.169.254", "cloud metadata address in IPv6 form"),
    ("::127.0.0.1", "loopback address in IPv6 form"),
    ("::10.0.0.1", "private address in IPv6 form"),
    ("64:ff9b::127.0.0.1", "loopback address in IPv6 form"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata address in IPv6 form (169.254.169.254)"),
    ("64:ff9b::c0a8:101", "private address in IPv6 form (192.168.1.1)"),
    ("2002:7f00:1::1", "loopback address in IPv6 form"),
    ("2002:a00:1::1", "private address in IPv6 form"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private address in IPv6 form (10.0.0.1)"),  # Teredo client
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "words"), REFUSED)
def test_each_kind_of_internal_address_is_refused(address: str, words: str) -> None:
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and words in why


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "words"), REFUSED)
def test_an_ip_literal_url_is_refused_without_a_lookup(address: str, words: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ForbiddenURLError, match="FETCH_ALLOW_HOSTS") as info:
        check_literal(f"http://{host}:8080/cat.png", AllowList())
    assert words in str(info.value)


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[str]:
    """Answer every lookup with `addresses`; return the names looked up."""
    asked: list[str] = []

    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    return asked


@pytest.mark.parametrize(
    ("addresses", "words"),
    [
        (("10.0.0.7",), "10.0.0.7, a private address"),
        (("169.254.169.254",), "a cloud metadata address"),
        (("fd00::5",), "a unique-local address"),
        (("::ffff:192.168.0.9",), "a private address in IPv6 form"),
        # One bad address among good ones refuses the name: the connection could pick it.
        (("93.184.215.14", "127.0.0.1"), "a loopback address"),
    ],
)
def test_a_name_resolving_to_an_internal_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, addresses: tuple[str, ...], words: str
) -> None:
    asked = _resolving_to(monkeypatch, *addresses)
    with pytest.raises(ForbiddenURLError) as info:
        resolve("https://images.example.com/cat.png", AllowList())
    assert asked == ["images.example.com"]
    assert words in str(info.value)


def test_a_name_resolving_to_public_addresses_is_pinned_to_them(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolving_to(monkeypatch, "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    target = resolve("https://images.example.com/cat.png", AllowList())
    assert (target.scheme, target.host, target.port) == ("https", "images.example.com", 443)
    assert [str(a) for a in target.addresses] == ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "file:///etc/passwd", "http:///nohost", "http://user:pw@example.com/a.png"],
)
def test_urls_other_than_plain_http_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenURLError):
        check_literal(url, AllowList())


def test_localhost_is_refused_by_name_without_a_lookup() -> None:
    with pytest.raises(ForbiddenURLError, match="loopback"):
        check_literal("http://LOCALHOST:9000/a.png", AllowList())


def test_the_allow_list_parses_hosts_ports_ips_and_ranges() -> None:
    allow = AllowList.parse(" minio:9000, Images.Internal ,10.20.0.0/16, 127.0.0.1:8000, [fd00::1]:9000, fd10::/16,")
    assert allow.trusts_host("minio", 9000) and not allow.trusts_host("minio", 9001)
    assert allow.trusts_host("images.internal", 80) and allow.trusts_host("IMAGES.internal.", 443)
    assert not allow.trusts_host("other.internal", 80)
    ip = ipaddress.ip_address
    assert allow.trusts_address(ip("10.20.3.4"), 80) and not allow.trusts_address(ip("10.21.0.1"), 80)
    assert allow.trusts_address(ip("127.0.0.1"), 8000) and not allow.trusts_address(ip("127.0.0.1"), 8001)
    assert allow.trusts_address(ip("fd00::1"), 9000) and not allow.trusts_address(ip("fd00::1"), 80)
    assert allow.trusts_address(ip("fd10::99"), 1) and not allow.trusts_address(ip("fd11::1"), 1)
    assert not AllowList.parse("") and not AllowList.parse(" , ")


@pytest.mark.parametrize("entry", ["bad host", "minio:0", "minio:99999", "minio:http", "[fd00::1]:x", "a..b", "-"])
def test_a_bad_allow_list_entry_is_named(entry: str) -> None:
    with pytest.raises(AllowListError, match="FETCH_ALLOW_HOSTS"):
        AllowList.parse(f"minio, {entry}")
    assert issubclass(AllowListError, InvalidSettingsError)


def test_a_bad_allow_list_setting_is_refused_when_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="'minio:notaport' has no valid port"):
        Settings(_env_file=None, fetch_allow_hosts="minio:notaport")
    assert Settings(_env_file=None).fetch_allow_list == AllowList()
    monkeypatch.setenv("FETCH_ALLOW_HOSTS", "minio, https://images.internal/")
    with pytest.raises(InvalidSettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid setting FETCH_ALLOW_HOSTS: 'https://images.internal/' is a URL: give its host")
    assert message.count("FETCH_ALLOW_HOSTS") == 1, message


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        ("minio", "http://minio:9000/a.png"),  # a name, any port
        ("minio:9000", "http://minio:9000/a.png"),  # a name on its port
        ("10.0.0.0/8", "http://minio:9000/a.png"),  # the range the name resolves into
        ("10.0.0.7:9000", "http://minio:9000/a.png"),  # the very address and port
        ("10.0.0.7", "http://10.0.0.7:9000/a.png"),  # an IP literal in the URL
    ],
)
def test_the_allow_list_lets_trusted_internal_hosts_through(
    monkeypatch: pytest.MonkeyPatch, allow: str, url: str
) -> None:
    _resolving_to(monkeypatch, "10.0.0.7")
    target = resolve(url, AllowList.parse(allow))
    assert [str(a) for a in target.addresses] == ["10.0.0.7"]


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        ("minio:9000", "http://minio:9001/a.png"),  # another port
        ("minio", "http://minio.evil.example/a.png"),  # a name is matched whole
        ("10.0.0.0/24", "http://minio:9000/a.png"),  # resolves outside the range (10.0.1.7)
        ("10.0.1.7:9000", "http://minio:80/a.png"),  # the address on another port
    ],
)
def test_the_allow_list_trusts_no_more_than_it_names(monkeypatch: pytest.MonkeyPatch, allow: str, url: str) -> None:
    _resolving_to(monkeypatch, "10.0.1.7")
    with pytest.raises(ForbiddenURLError, match=r"10\.0\.1\.7, a private address"):
        resolve(url, AllowList.parse(allow))


@pytest.mark.parametrize(
    ("allow", "url", "resolves_to"),
    [
        ("0.0.0.0/0", "http://169.254.169.254/latest/meta-data/", None),  # a range holding it
        ("169.254.0.0/16", "http://[::ffff:169.254.169.254]/x.png", None),  # in IPv6 form
        ("metadata.internal", "http://metadata.internal/x.png", "169.254.169.254"),  # a trusted name
        ("100.64.0.0/10", "http://100.100.100.200/x.png", None),  # Alibaba's, inside CGNAT
    ],
)
def test_no_allow_list_entry_trusts_a_cloud_metadata_address(
    monkeypatch: pytest.MonkeyPatch, allow: str, url: str, resolves_to: str | None
) -> None:
    if resolves_to is not None:
        _resolving_to(monkeypatch, resolves_to)
    else:
        with pytest.raises(ForbiddenURLError, match="cloud metadata address"):
            check_literal(url, AllowList.parse(allow))
    with pytest.raises(ForbiddenURLError, match="cloud metadata address"):
        resolve(url, AllowList.parse(allow))


def test_an_unresolvable_name_is_a_fetch_error_not_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(URLFetchError, match="cannot resolve") as info:
        resolve("https://nowhere.example/a.png", AllowList())
    assert not isinstance(info.value, ForbiddenURLError)


@pytest.mark.parametrize("check", [True, False])
def test_the_producer_refuses_a_forbidden_image_url_before_storing_anything(check: bool) -> None:
    # With CHECK_IMAGE_URLS off only the checks that need no network run: an IP literal is one.
    client = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(_env_file=None, check_image_urls=check), store=jobstore.JobStore(client))
    url = "http://169.254.169.254/latest/meta-data/iam/cat.png"
    with pytest.raises(InvalidRequestError) as info:
        vq.submit(VideoRequest(prompt="a cat", provider="veo", image_url=url))
    assert "169.254.169.254, a cloud metadata address" in info.value.problems["image_url"]
    assert client.keys("*") == []


@pytest.mark.parametrize(
    "url", ["http://10.0.0.9/a.png", "http://[::ffff:127.0.0.1]:8000/a.png", "http://[fd00:ec2::254]/a.png"]
)
def test_the_worker_ends_a_forbidden_image_fetch_with_a_user_input_error(url: str) -> None:
    with pytest.raises(ProviderError) as info:
        fetch_image(url, AllowList(), max_bytes=1024, timeout_s=5)
    error = info.value
    assert error.code is ErrorCode.INVALID_REQUEST and not error.retryable
    assert not error.request_sent  # the provider was never called
    assert "image URL refused" in error.message
