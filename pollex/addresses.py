"""Checks of the settings that name places: upstream URLs, browser origins, proxy networks
and `Host` names. Each takes the list as written and returns it normalised, or raises
`ValueError` saying which entry is wrong and what was expected."""

from __future__ import annotations

import ipaddress
import re

# An upstream's base URL: http(s) and a host.
_BASE_URL = re.compile(r"https?://[^/\s?#]+(/\S*)?", re.IGNORECASE)
# An origin as browsers send it: scheme://host[:port], no path (or "*": any origin).
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+")
# A Host header's name: no scheme, path, space or user info.
_HOST_NAME = re.compile(r"[^/\s@?#]+")


def base_urls(value: list[str]) -> list[str]:
    wrong = [v for v in value if not _BASE_URL.fullmatch(v)]
    if wrong:
        raise ValueError(f"{wrong[0]!r} is not a URL (http://host:port)")
    return value


def origins(value: list[str]) -> list[str]:
    value = [v.strip().lower() for v in value]
    wrong = [v for v in value if v != "*" and not _ORIGIN.fullmatch(v)]
    if wrong:
        raise ValueError(f"{wrong[0]!r} is not an origin (scheme://host[:port], no path, or *)")
    return value


def networks(value: list[str]) -> list[str]:
    value = [v.strip() for v in value]
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return value


def host_names(value: list[str]) -> list[str]:
    value = [v.strip().lower() for v in value]
    wrong = [v for v in value if not _HOST_NAME.fullmatch(v)]
    if wrong:
        raise ValueError(f"{wrong[0]!r} is not a host name (as in a Host header)")
    return value
