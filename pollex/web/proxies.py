"""Who the client is: the socket peer, or the address a trusted proxy reports.

Proxy headers are whatever the sender wrote, so they are read only when the connecting
peer is one of `trusted_proxies` (cloudflared or nginx on the same host by default) and
`trust_proxy_headers` is on. Then the client is `CF-Connecting-IP` (Cloudflare overwrites
it at its edge), else the right-most `X-Forwarded-For` address that is not a trusted proxy:
each proxy appends the address it saw, so the hops at the right were written by proxies
pollex trusts and everything further left was written by the client. A hop that is not an
address ends the walk: it was not written by a proxy that can be trusted to append, so
the peer's address is used rather than anything the client may have chosen.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(request: web.BaseRequest, trust_proxy_headers: bool, trusted: Iterable[str]) -> str:
    """The address the rate limit counts this request against."""
    peer_text = request.remote or "unknown"
    peer = parse_ip(peer_text)
    if peer is None:
        return peer_text
    networks = trusted_networks(tuple(trusted))
    if not trust_proxy_headers or not _is_trusted(peer, networks):
        return str(peer)
    cloudflare = parse_ip(request.headers.get("CF-Connecting-IP", ""))
    if cloudflare is not None:
        return str(cloudflare)
    hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
    for hop in reversed(hops):
        if not hop.strip():
            continue
        address = parse_ip(hop)
        if address is None:
            break
        if not _is_trusted(address, networks):
            return str(address)
    return str(peer)


def parse_ip(text: str) -> IPAddress | None:
    """An address as a peer or a proxy writes it: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`.

    IPv4 addresses mapped into IPv6 (a dual-stack socket's peers) are their IPv4 selves.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=8)
def trusted_networks(trusted: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The configured proxies, parsed once (the config loader has checked them)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in trusted)


def _is_trusted(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks)
