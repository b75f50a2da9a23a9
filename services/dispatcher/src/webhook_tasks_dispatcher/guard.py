"""The SSRF guard: which outbound addresses the dispatcher may connect to.

A URL is checked before its request is sent (so a refusal gets a clear reason),
and the same guard is the HTTP connector's resolver (so the connection goes to an
address that was checked: a name that re-resolves to a private address between
the check and the connect is refused at connect time, not followed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from webhook_tasks_runtime.timeouts import within

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]

_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


# The resolver's definite "no such host" answers; not every platform defines EAI_NODATA.
_NO_SUCH_HOST = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


class UrlRefusedError(OSError):
    """The guard will not let the dispatcher send to this URL; the message says why."""


class TransientResolutionError(OSError):
    """The URL's host could not be resolved this time, though it may exist; try again later."""


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Hosts and networks that are reachable even though they are not public."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Build from entries that are each a CIDR, an IP address or a host name."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        """Tell whether `host` is allow-listed by name."""
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """Tell whether `address` is inside an allow-listed network."""
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.networks
        )


def why_forbidden(address: IPAddress) -> str | None:
    """Return why `address` is not a public unicast address, or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return why_forbidden(address.ipv4_mapped)
        if address in _NAT64:
            # A NAT64 gateway would forward to the embedded IPv4 address.
            return why_forbidden(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        # 6to4 and Teredo relays would also forward to their embedded IPv4 addresses.
        if address.sixtofour is not None:
            why = why_forbidden(address.sixtofour)
            if why is not None:
                return f"a 6to4 address embedding {why} ({address.sixtofour})"
        if address.teredo is not None:
            for embedded in address.teredo:
                why = why_forbidden(embedded)
                if why is not None:
                    return f"a Teredo address embedding {why} ({embedded})"
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (
            isinstance(address, ipaddress.IPv6Address) and address.is_site_local,
            "a site-local address",
        ),
        (
            isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL,
            "a unique-local address",
        ),
        (address in _SHARED_ADDRESS_SPACE, "a carrier-grade NAT address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    for hit, why in checks:
        if hit:
            return why
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """Resolve `host` with the operating system's resolver; return its addresses."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class _Resolution:
    addresses: list[IPAddress]
    allow_listed: bool
    """Allow-listed by name or by every address: plain http is let through."""


class UrlGuard:
    """Check outbound URLs and resolve their hosts to checked addresses only."""

    def __init__(
        self,
        *,
        allow: Allowlist = Allowlist(),
        require_https: bool = True,
        resolve: Resolve = system_resolve,
        cache_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allow = allow
        self._require_https = require_https
        self._resolve = resolve
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._cache: dict[tuple[str, int], tuple[float, _Resolution]] = {}

    async def check(self, url: str, *, lookup_within: float | None = None) -> None:
        """Raise UrlRefusedError unless `url` may be requested; TransientResolutionError: retry.

        A host lookup that takes longer than `lookup_within` seconds raises TimeoutError.
        """
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise UrlRefusedError("the webhook URL is not an http(s) URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as error:
            raise UrlRefusedError("the webhook URL has an invalid port") from error
        resolution = await self._resolution(host, port, lookup_within)
        if self._require_https and parts.scheme != "https" and not resolution.allow_listed:
            raise UrlRefusedError("the webhook URL must use https")

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Return the addresses of `host`, each allowed; raise UrlRefusedError if any is not."""
        return (await self._resolution(host, port)).addresses

    async def _resolution(
        self, host: str, port: int, lookup_within: float | None = None
    ) -> _Resolution:
        key = (host.lower().rstrip("."), port)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._monotonic():
            return cached[1]
        addresses = await self._lookup(key[0], port, lookup_within)
        host_allowed = self._allow.allows_host(key[0])
        if not host_allowed:
            for address in addresses:
                why = None if self._allow.allows_address(address) else why_forbidden(address)
                if why is not None:
                    # One bad address refuses the host: the connector might pick any of them.
                    raise UrlRefusedError(f"the webhook host {host} resolves to {why} ({address})")
        resolution = _Resolution(
            addresses,
            allow_listed=host_allowed
            or all(self._allow.allows_address(address) for address in addresses),
        )
        self._cache[key] = (self._monotonic() + self._cache_seconds, resolution)
        if len(self._cache) > 10_000:
            self._cache.clear()
        return resolution

    async def _lookup(self, host: str, port: int, lookup_within: float | None) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        # Only a lookup is timed: a timer for every check, most of them answered from the
        # cache, cost the dispatcher about 2% of its CPU. The resolver's own errors, its
        # timeouts too, are classified inside the limit, so a TimeoutError out of it is ours.
        resolving = self._resolved(host, port)
        return await (resolving if lookup_within is None else within(lookup_within, resolving))

    async def _resolved(self, host: str, port: int) -> list[IPAddress]:
        try:
            found = await self._resolve(host, port)
        except OSError as error:
            if isinstance(error, socket.gaierror) and error.errno in _NO_SUCH_HOST:
                raise UrlRefusedError(
                    f"the webhook host {host} could not be resolved: no such host"
                ) from error
            # Anything else (a DNS server down or timing out) may pass: the task is retried.
            raise TransientResolutionError(
                f"the webhook host {host} could not be resolved for now"
                f" ({str(error) or type(error).__name__})"
            ) from error
        addresses = [ipaddress.ip_address(address.split("%", 1)[0]) for address in found]
        if not addresses:
            raise UrlRefusedError(f"the webhook host {host} has no address")
        return addresses


def guarded_resolver(guard: UrlGuard) -> Any:
    """Return an aiohttp resolver that hands the connector checked addresses only."""
    from aiohttp.abc import AbstractResolver, ResolveResult

    class GuardedResolver(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            addresses = await guard.addresses(host, port)
            return [
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
                for address in addresses
            ]

        async def close(self) -> None:
            return None

    return GuardedResolver()
