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


IP = ipaddress.IPv4Address | ipaddress.IPv6Address
# IPv6 forms whose packets a translator or tunnel delivers to the IPv4 address inside them:
# NAT64's well-known prefix (RFC 6052) and the deprecated IPv4-compatible form. (6to4, Teredo
# and IPv4-mapped addresses, the library unwraps.) The local-use NAT64 prefix is not public.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Not globally reachable (IANA's special-purpose registry), though Python 3.11's `is_global`
# says otherwise: the IETF protocol assignments and NAT64's local-use prefix.
_NOT_GLOBAL = (ipaddress.IPv4Network("192.0.0.0/24"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def _ip(address: str) -> IP:
    """The address, an IPv4-mapped IPv6 one as the IPv4 one it is (no zone)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _reached(address: str) -> list[IP]:
    """The address and every IPv4 address a packet to it may end up at."""
    ip = _ip(address)
    if not isinstance(ip, ipaddress.IPv6Address):
        return [ip]
    inner = [ip.sixtofour, *(ip.teredo or ())]
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [ip, *(i for i in inner if i is not None)]


def is_public(address: str) -> bool:
    return all(
        ip.is_global and not ip.is_multicast and not any(ip in net for net in _NOT_GLOBAL)
        for ip in _reached(address)
    )


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
