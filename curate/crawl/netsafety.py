"""Which addresses the crawler may contact, enforced where the socket is opened.

Only ``http``/``https`` URLs are fetched. Every hostname is resolved and each of its addresses classified; a host
with any address that is not public (loopback, private, link-local, carrier-grade NAT, multicast, reserved,
unspecified, and the IPv4-mapped / 6to4 / Teredo forms of those) is refused unless ``allow_private`` is set or
``allow_hosts`` names it. Cloud metadata endpoints are refused even with ``allow_private``: no image lives there,
and a page linking to one is an attack; only ``allow_hosts`` naming the address itself lets one through. The
metadata hostnames (``METADATA_HOSTS``) are refused by name before any lookup: behind a proxy (``--proxy``) the
name may not resolve here yet still reach the metadata service from the proxy's side.

The check runs twice. ``AddressGuard.check_url`` gives a clear ``refused`` row before anything is sent. The
enforcing one is in ``curate.crawl.transport``: every new connection resolves the hostname, checks every address
with the same guard and connects to a checked IP, so a DNS answer that changes after the first check (DNS
rebinding) or a redirect to another host is caught on every hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

#: Cloud instance-metadata addresses (AWS/GCP/Azure/OpenStack, AWS ECS and IPv6, Alibaba, Oracle).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
#: Names of cloud metadata services (GCP, AWS, Alibaba ...): refused by name, whatever they resolve to here.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"})
_CACHE_SECONDS = 300.0


class RefusedAddress(Exception):
    """The URL's scheme or one of its host's addresses is not allowed; ``str(exc)`` says which and why."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address (``"loopback"``, ``"private"`` ...), or None when it is."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address that embeds an IPv4 one reaches that IPv4 host: judge the embedded address.
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return address_problem(inner)
    for attr, name in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, attr):
            return name
    return None if ip.is_global else "non-public"


def check_scheme(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL.

    Raises:
        RefusedAddress: another scheme, no host, or an unparsable URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedAddress(f"invalid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise RefusedAddress(f"scheme {scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise RefusedAddress("URL has no host")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


class AddressGuard:
    """Resolve hostnames and refuse non-public addresses; answers are cached for five minutes.

    Args:
        allow_private: allow loopback, private, link-local ... addresses (never metadata ones).
        allow_hosts: hostnames or IP literals exempt from every address check.
        resolve_timeout: seconds a DNS lookup may take.
    """

    def __init__(self, *, allow_private: bool = False, allow_hosts: Iterable[str] = (), resolve_timeout: float = 10.0) -> None:
        self.allow_private = allow_private
        self.allow_hosts = frozenset(h.lower().strip("[]") for h in allow_hosts)
        self.resolve_timeout = resolve_timeout
        self._cache: dict[tuple[str, int], tuple[float, list[str] | RefusedAddress]] = {}

    def check_ip(self, ip: IPAddress, host: str) -> None:
        """Raise ``RefusedAddress`` unless ``ip`` (an address of ``host``) may be contacted."""
        if host.lower() in self.allow_hosts or str(ip) in self.allow_hosts:
            return
        problem = address_problem(ip)
        if problem is None or (self.allow_private and problem != "cloud metadata"):
            return
        flag = "" if problem == "cloud metadata" else " (--allow-private allows it)"
        shown = host if host == str(ip) else f"{host} ({ip})"
        raise RefusedAddress(f"{shown} is a {problem} address{flag}")

    async def resolve(self, host: str, port: int) -> list[str]:
        """The checked addresses of ``host`` to connect to, in resolver order.

        Raises:
            RefusedAddress: any address of the host is not allowed (one bad answer refuses the host).
            OSError: the name does not resolve (``socket.gaierror``) or the lookup timed out.
        """
        key = (host.lower().strip("[]").rstrip("."), port)
        if key[0] in METADATA_HOSTS and key[0] not in self.allow_hosts:
            raise RefusedAddress(f"{host} is a cloud metadata host")
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            if isinstance(hit[1], RefusedAddress):
                raise hit[1]
            return hit[1]
        try:
            ips = [ipaddress.ip_address(key[0])]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.resolve_timeout):
                    infos = await loop.getaddrinfo(key[0], port, type=socket.SOCK_STREAM)
            except TimeoutError:
                raise OSError(f"DNS lookup of {host} took more than {self.resolve_timeout}s") from None
            ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        try:
            for ip in ips:
                self.check_ip(ip, key[0])
        except RefusedAddress as exc:
            self._cache[key] = (time.monotonic() + _CACHE_SECONDS, exc)
            raise
        out = [str(ip) for ip in ips]
        self._cache[key] = (time.monotonic() + _CACHE_SECONDS, out)
        return out

    async def check_url(self, url: str) -> None:
        """Refuse a URL with another scheme or a host with a non-public address (raises ``RefusedAddress``)."""
        _, host, port = check_scheme(url)
        await self.resolve(host, port)
