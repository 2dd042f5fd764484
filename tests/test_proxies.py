"""pollex.web.proxies.client_ip: proxy headers only from trusted proxies, right-most hop."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from pollex.web.proxies import client_ip, parse_ip

DEFAULT = ("127.0.0.1", "::1")


def ip_of(
    peer: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    trust: bool = True,
    trusted: tuple[str, ...] = DEFAULT,
) -> str:
    request = make_mocked_request("GET", "/", headers=CIMultiDict(headers or []))
    return client_ip(request.clone(remote=peer), trust, trusted)


def test_without_trust_the_peer_is_the_client() -> None:
    headers = [("CF-Connecting-IP", "198.51.100.1"), ("X-Forwarded-For", "198.51.100.2")]
    assert ip_of("127.0.0.1", headers, trust=False) == "127.0.0.1"


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    headers = [("CF-Connecting-IP", "198.51.100.1"), ("X-Forwarded-For", "198.51.100.2")]
    assert ip_of("203.0.113.9", headers) == "203.0.113.9"


def test_cf_connecting_ip_from_a_trusted_peer() -> None:
    headers = [("CF-Connecting-IP", "198.51.100.1"), ("X-Forwarded-For", "198.51.100.2")]
    assert ip_of("127.0.0.1", headers) == "198.51.100.1"


def test_the_right_most_untrusted_hop_not_the_left_most() -> None:
    """The left-most hop is whatever the client wrote; the proxy appended the real one."""
    forwarded = [("X-Forwarded-For", "10.11.12.13, 198.51.100.7")]
    assert ip_of("127.0.0.1", forwarded) == "198.51.100.7"


def test_trusted_hops_at_the_right_are_skipped() -> None:
    chain = [("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 10.0.0.2, 127.0.0.1")]
    assert ip_of("::1", chain, trusted=(*DEFAULT, "10.0.0.0/8")) == "198.51.100.7"


def test_several_header_lines_are_one_list() -> None:
    lines = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7")]
    assert ip_of("127.0.0.1", lines) == "198.51.100.7"


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Forwarded-For", "6.6.6.6, not-an-address")],
        [("CF-Connecting-IP", "garbage")],
        [("X-Forwarded-For", "127.0.0.1")],
        [("X-Forwarded-For", "")],
        [],
    ],
    ids=["garbage-hop", "garbage-cf", "all-trusted", "empty", "none"],
)
def test_nothing_usable_means_the_peer(headers: list[tuple[str, str]]) -> None:
    assert ip_of("127.0.0.1", headers) == "127.0.0.1"


def test_an_ipv4_peer_on_a_dual_stack_socket_is_trusted() -> None:
    assert ip_of("::ffff:127.0.0.1", [("X-Forwarded-For", "198.51.100.7")]) == "198.51.100.7"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7:443 ", "198.51.100.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("nope", None),
        ("[::1", None),
    ],
)
def test_parse_ip(text: str, address: str | None) -> None:
    parsed = parse_ip(text)
    assert (str(parsed) if parsed else None) == address
