"""The SSRF guard: which addresses and URLs are refused, and why."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from webhook_tasks_dispatcher.guard import (
    Allowlist,
    Resolve,
    TransientResolutionError,
    UrlGuard,
    UrlRefusedError,
    why_forbidden,
)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("169.254.10.10", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("198.18.0.1", "private"),
        ("192.0.2.10", "private"),
        ("2001:db8::1", "private"),
        # IPv4-mapped and NAT64 forms reach the embedded IPv4 address.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        # 6to4 and Teredo relays reach the embedded IPv4 addresses too.
        ("2002:7f00:1::1", "6to4 address embedding a loopback address (127.0.0.1)"),
        ("2002:a9fe:a9fe::1", "6to4 address embedding a cloud metadata address"),
        ("2002:a00:1::1", "6to4 address embedding a private address (10.0.0.1)"),
        # Teredo: server 127.0.0.1, client 93.184.216.34 (stored as its complement).
        ("2001:0:7f00:1:0:0:a247:27dd", "Teredo address embedding a loopback address"),
        # Teredo: server 65.54.227.120, client 169.254.169.254.
        ("2001:0:4136:e378:8000:0:5601:5601", "Teredo address embedding a cloud metadata"),
        # Teredo is not global even when both its addresses are.
        ("2001:0:4136:e378:8000:63bf:a247:27dd", "private"),
    ],
)
def test_non_public_addresses_are_forbidden(address: str, why: str) -> None:
    reason = why_forbidden(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::1",  # 6to4 of 8.8.8.8
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert why_forbidden(ipaddress.ip_address(address)) is None


class Resolver:
    """Resolves from a table, as the system's resolver would; records each host asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def resolver(table: dict[str, list[str]]) -> Resolver:
    return Resolver(table)


DNS = {
    "public.example.com": ["93.184.216.34"],
    "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
    "v6.example.com": ["2606:4700:4700::1111"],
    "mapped.example.com": ["::ffff:192.168.0.1"],
    "internal.corp": ["10.1.1.1"],
    "localhost": ["127.0.0.1", "::1"],
}


@pytest.mark.parametrize(
    ("url", "allow", "require_https", "refusal"),
    [
        ("https://public.example.com/x", [], True, None),
        ("https://v6.example.com/x", [], True, None),
        ("https://93.184.216.34/x", [], True, None),
        ("http://public.example.com/x", [], True, "must use https"),
        ("http://public.example.com/x", [], False, None),
        ("https://mixed.example.com/x", [], True, "private address (10.0.0.7)"),
        ("https://mapped.example.com/x", [], True, "private address"),
        ("https://internal.corp/x", [], True, "private address"),
        ("https://internal.corp/x", ["internal.corp"], True, None),
        ("http://internal.corp/x", ["internal.corp"], True, None),
        ("https://internal.corp/x", ["10.0.0.0/8"], True, None),
        ("https://internal.corp/x", ["10.2.0.0/16"], True, "private address"),
        ("http://localhost:8000/x", [], False, "loopback"),
        ("http://localhost:8000/x", ["127.0.0.0/8", "::1/128"], True, None),
        ("http://localhost:8000/x", ["127.0.0.0/8"], True, "loopback address (::1)"),
        ("http://127.0.0.1:9/x", ["127.0.0.1"], True, None),
        ("http://[::ffff:127.0.0.1]:9/x", ["127.0.0.0/8"], True, None),
        ("https://[::ffff:127.0.0.1]/x", [], True, "loopback"),
        ("https://169.254.169.254/latest", [], True, "cloud metadata"),
        ("https://[fd00:ec2::254]/latest", [], True, "cloud metadata"),
        ("https://nowhere.example.com/x", [], True, "could not be resolved: no such host"),
        ("ftp://public.example.com/x", [], True, "not an http(s) URL"),
        ("https://public.example.com:99999/x", [], True, "invalid port"),
    ],
)
async def test_urls(url: str, allow: list[str], require_https: bool, refusal: str | None) -> None:
    guard = UrlGuard(
        allow=Allowlist.parse(allow),
        require_https=require_https,
        resolve=resolver(DNS),
    )
    if refusal is None:
        await guard.check(url)
        return
    with pytest.raises(UrlRefusedError) as refused:
        await guard.check(url)
    assert refusal in str(refused.value)


async def test_resolutions_are_cached_briefly() -> None:
    now = [0.0]
    resolve = resolver(DNS)
    guard = UrlGuard(resolve=resolve, cache_seconds=10, monotonic=lambda: now[0])

    await guard.check("https://public.example.com/a")
    await guard.check("https://public.example.com/b")
    now[0] = 11
    await guard.check("https://public.example.com/c")

    assert resolve.calls == ["public.example.com", "public.example.com"]


async def test_a_name_that_turns_private_is_refused_after_the_cache_expires() -> None:
    now = [0.0]
    table = {"flip.example.com": ["93.184.216.34"]}
    guard = UrlGuard(resolve=resolver(table), cache_seconds=1, monotonic=lambda: now[0])
    await guard.check("https://flip.example.com/")

    table["flip.example.com"] = ["127.0.0.1"]
    now[0] = 2

    with pytest.raises(UrlRefusedError, match="loopback"):
        await guard.addresses("flip.example.com", 443)


async def test_the_connector_resolver_only_returns_checked_addresses() -> None:
    from webhook_tasks_dispatcher.guard import guarded_resolver

    guard = UrlGuard(resolve=resolver(DNS))
    connector_resolver = guarded_resolver(guard)

    (found,) = await connector_resolver.resolve("public.example.com", 443)
    assert found["host"] == "93.184.216.34"
    with pytest.raises(UrlRefusedError):
        await connector_resolver.resolve("mixed.example.com", 443)
    with pytest.raises(OSError, match="private"):  # aiohttp wraps OSError as a connect error
        await connector_resolver.resolve("internal.corp", 443)


def failing_resolver(error: OSError) -> Resolve:
    async def resolve(host: str, port: int) -> list[str]:
        raise error

    return resolve


@pytest.mark.parametrize(
    "error",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        socket.gaierror(socket.EAI_NODATA, "No address associated with hostname"),
    ],
)
async def test_a_host_that_does_not_exist_is_refused(error: OSError) -> None:
    guard = UrlGuard(resolve=failing_resolver(error))

    with pytest.raises(UrlRefusedError, match="could not be resolved: no such host"):
        await guard.check("https://nowhere.example.com/x")


@pytest.mark.parametrize(
    "error",
    [
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution"),
        socket.gaierror(socket.EAI_SYSTEM, "System error"),
        TimeoutError(),
        OSError("network is unreachable"),
    ],
)
@pytest.mark.parametrize("lookup_within", [None, 5.0])
async def test_a_resolver_failure_that_may_pass_is_transient_not_a_refusal(
    error: OSError, lookup_within: float | None
) -> None:
    guard = UrlGuard(resolve=failing_resolver(error))

    with pytest.raises(TransientResolutionError, match="could not be resolved for now") as raised:
        # The resolver's own TimeoutError too: only the caller's limit raises a TimeoutError.
        await guard.check("https://flaky.example.com/x", lookup_within=lookup_within)
    assert not isinstance(raised.value, UrlRefusedError)
    # Callers that treat OSError as a failed connection keep doing so.
    assert isinstance(raised.value, OSError)
    assert raised.value.__cause__ is error


async def test_a_transient_failure_is_not_cached() -> None:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if len(calls) == 1:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return ["93.184.216.34"]

    guard = UrlGuard(resolve=resolve)
    with pytest.raises(TransientResolutionError):
        await guard.check("https://flaky.example.com/x")

    await guard.check("https://flaky.example.com/x")
    assert calls == ["flaky.example.com", "flaky.example.com"]


async def test_a_lookup_slower_than_its_limit_raises_timeout_and_caches_nothing() -> None:
    answers: list[float] = [30.0, 0.0]

    async def resolve(host: str, port: int) -> list[str]:
        await asyncio.sleep(answers.pop(0))
        return ["93.184.216.34"]

    guard = UrlGuard(resolve=resolve)
    with pytest.raises(TimeoutError):
        await guard.check("https://slow.example.com/x", lookup_within=0.05)

    await guard.check("https://slow.example.com/x", lookup_within=0.05)
    assert answers == []


async def test_a_cached_host_is_checked_within_any_limit_without_a_lookup() -> None:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["93.184.216.34"]

    guard = UrlGuard(resolve=resolve)
    await guard.check("https://public.example.com/a", lookup_within=5.0)
    # No time at all is left: answered from the cache, the check needs none.
    await guard.check("https://public.example.com/b", lookup_within=0.0)
    assert calls == ["public.example.com"]


async def test_the_connector_resolver_raises_a_transient_failure_as_an_os_error() -> None:
    from webhook_tasks_dispatcher.guard import guarded_resolver

    error = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    connector_resolver = guarded_resolver(UrlGuard(resolve=failing_resolver(error)))

    # aiohttp wraps an OSError from its resolver as a connect error: the request is retried.
    with pytest.raises(TransientResolutionError):
        await connector_resolver.resolve("flaky.example.com", 443)


def test_allowlist_entries_are_cidrs_addresses_or_names() -> None:
    allow = Allowlist.parse(["10.0.0.0/8", " 192.168.1.5 ", "Internal.Corp.", "", "::1"])
    assert allow.hosts == frozenset({"internal.corp"})
    assert allow.allows_host("INTERNAL.corp")
    assert allow.allows_address(ipaddress.ip_address("10.9.9.9"))
    assert allow.allows_address(ipaddress.ip_address("192.168.1.5"))
    assert not allow.allows_address(ipaddress.ip_address("192.168.1.6"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert allow.allows_address(ipaddress.ip_address("::1"))
