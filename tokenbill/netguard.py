"""Requests to URLs that merchants choose (today: the low-balance alert webhook) may reach
only the public internet. Without this, any merchant of a shared TokenBill could make the
server POST to 127.0.0.1, the LAN, or the cloud metadata service (server-side request
forgery).

The check resolves the host and refuses it unless EVERY address it resolves to is public:
a name with one public and one private record would otherwise be a coin toss. Checking at
save time is not enough, because DNS answers change (a rebinding name answers a public
address to the check and 127.0.0.1 a second later), so `post` resolves again, checks, and
connects to the very address it checked: the URL's host is replaced by that address, the
Host header and the TLS server name (SNI, certificate check) keep the original name.

Errors never contain the URL (it may hold credentials or a token in its query string) nor
the address the host resolved to (a user must not learn the internal DNS through a form).
"""

from __future__ import annotations

import ipaddress
import socket

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud instance metadata services hand out the host's cloud credentials: AWS, GCP, Azure,
# OpenStack (169.254.169.254), AWS over IPv6 (fd00:ec2::254), Alibaba (100.100.100.200).
# Refused even when private targets are allowed: no webhook lives there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# NAT64 (RFC 6052): a router translates 64:ff9b::7f00:1 to 127.0.0.1 on its side.
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """The URL must not be requested. str() is the reason, safe to show to the merchant;
    `address` is the offending address, for operators' logs only."""

    def __init__(self, reason: str, address: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.address = address


def check_url(url: str, *, allow_private: bool = False) -> list[IPAddress]:
    """The addresses `url`'s host resolves to, all of them allowed; else UnsafeURL.

    allow_private lets non-public targets through (private, loopback, link-local, ...: a
    self-hosted TokenBill whose merchants' webhooks live on its LAN), never the metadata
    addresses.
    """
    return _check(_parse(url), allow_private=allow_private)


def validate_webhook_url(url: str) -> None:
    """Django validator for a merchant-chosen webhook URL, shared by every form that saves
    one (the console's settings and the operator admin): a ValidationError with the reason
    unless check_url accepts it under ALERT_WEBHOOK_ALLOW_PRIVATE. An empty URL (no
    webhook) passes."""
    if not url:
        return
    try:
        check_url(url, allow_private=settings.ALERT_WEBHOOK_ALLOW_PRIVATE)
    except UnsafeURL as exc:
        # The reason only, never the resolved address: a form must not map internal DNS.
        raise ValidationError(f"Refused: {exc}. The webhook must be a public http(s) address.",
                              code="unsafe_url") from None


def _check(parsed: httpx.URL, *, allow_private: bool) -> list[IPAddress]:
    addresses = _resolve(parsed)
    for address in addresses:
        reason = address_problem(address, allow_private=allow_private)
        if reason:
            raise UnsafeURL(f"the host resolves to {reason}", address=str(address))
    return addresses


def post(url: str, *, content: bytes, headers: dict[str, str], timeout: float,
         allow_private: bool = False) -> httpx.Response:
    """POST to `url` after check_url, pinned to the first checked address; never follows a
    redirect (a public server could answer 307 to an internal one)."""
    parsed = _parse(url)
    address = _check(parsed, allow_private=allow_private)[0]
    pinned = parsed.copy_with(host=str(address))
    headers = {**headers, "Host": parsed.netloc.decode("ascii")}
    extensions = {"sni_hostname": parsed.raw_host.decode("ascii")} if parsed.scheme == "https" else {}
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        return client.post(pinned, content=content, headers=headers, extensions=extensions)


def address_problem(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why `address` may not be contacted ("a loopback address", ...), or None."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = address_problem(embedded, allow_private=allow_private)
        if reason or address.ipv4_mapped:  # a mapped address is its IPv4 address, nothing more
            return reason
    if allow_private:
        return None
    return _kind(address)


def redact(url: str) -> str:
    """scheme://host[:port]/path of `url`: no user, password, query or fragment, for logs."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return str(httpx.URL(scheme=parsed.scheme, host=parsed.host, port=parsed.port, path=parsed.path))


def _parse(url: str) -> httpx.URL:
    # httpx's own parser, so the host checked here is the host httpx would connect to.
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise UnsafeURL("the URL is not valid") from None
    if parsed.scheme not in SCHEMES:
        raise UnsafeURL("only http and https URLs are allowed")
    if not parsed.raw_host:
        raise UnsafeURL("the URL has no host")
    return parsed


def _resolve(parsed: httpx.URL) -> list[IPAddress]:
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        raise UnsafeURL("the host could not be resolved") from None
    # A link-local IPv6 answer may carry its interface ("fe80::1%eth0"); the address is what counts.
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
    if not addresses:
        raise UnsafeURL("the host could not be resolved")
    return addresses


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and is delivered to (mapped, 6to4, NAT64)."""
    if address.version != 6:
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: IPAddress) -> str | None:
    # Most specific first: 127.0.0.1 is private as well, but "loopback" says more.
    checks = [
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
    ]
    for attribute, reason in checks:
        if getattr(address, attribute):
            return reason
    # What remains and is not global: shared address space (100.64.0.0/10, carrier-grade NAT).
    return None if address.is_global else "a non-public address"
