"""Where a webhook may point (docs/security.md, "Webhooks"): http(s) URLs only, and with
BATON_WEBHOOK_TARGETS=public only hosts whose every address is public, so a tenant cannot
make the api POST into the network it runs in (SSRF); with `loopback`, only this machine
(tests, a local receiver). Checked when a webhook is made and again before each attempt
(the name may resolve elsewhere by then)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Literal
from urllib.parse import urlsplit

Targets = Literal["any", "public", "loopback"]

MAX_URL_LENGTH = 2048


class TargetRefused(ValueError):
    """Why a URL may not be a webhook's target."""


def check_url(url: str) -> str:
    """The URL's host, if its form is one a webhook may have."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("only http and https URLs")
    if not parts.hostname:
        raise TargetRefused("no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("no credentials in the URL: check the signature instead")
    try:
        parts.port  # noqa: B018  # raises on a port out of range
    except ValueError as exc:
        raise TargetRefused(str(exc)) from None
    return parts.hostname


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address, an IPv4-mapped IPv6 one as the IPv4 one it is (no zone)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public(address: str) -> bool:
    ip = _ip(address)
    return ip.is_global and not ip.is_multicast


def is_loopback(address: str) -> bool:
    return _ip(address).is_loopback


async def check_target(url: str, targets: Targets) -> None:
    """Raises TargetRefused unless a request to `url` may be sent."""
    host = check_url(url)
    if targets == "any":
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"cannot resolve {host}: {exc}") from None
    addresses = {str(info[4][0]) for info in infos}
    allowed = is_public if targets == "public" else is_loopback
    refused = sorted(a for a in addresses if not allowed(a))
    if refused:
        kind = "non-public" if targets == "public" else "non-loopback"
        raise TargetRefused(f"{host} resolves to a {kind} address ({refused[0]})")
