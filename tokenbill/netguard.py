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
import re
import socket
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud instance metadata services hand out the host's cloud credentials: AWS, GCP, Azure,
# OpenStack (169.254.169.254), AWS over IPv6 (fd00:ec2::254), Alibaba (100.100.100.200).
# Refused even when private targets are allowed: no webhook lives there.
# AWS ECS task credentials (169.254.170.2) and EKS Pod Identity (169.254.170.23, fd00:ec2::23)
# hand out credentials too.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                      "169.254.170.2", "169.254.170.23", "fd00:ec2::23")
)
# Names that resolve to a metadata service inside its cloud (GCP, AWS): refused as names,
# before any DNS, so a refusal does not depend on where the check runs.
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
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


# --- provider base URLs (the gateway's upstreams) ------------------------------------------
# An upstream is chosen by whoever configures a provider. Unlike a webhook it is often on a
# private network (a docker-compose or Kubernetes service such as http://vllm:8000/v1, a
# LAN Ollama), so private targets are a policy (UPSTREAM_ALLOW_PRIVATE, or the provider's
# operator-set flag); the metadata addresses are refused always. Checked here at save, on
# the URL as written, and by gateway/httpclient.py again at connect time after DNS.

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_IPV4_ISH = re.compile(r"[0-9a-fx.]+")


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP literal means, in any form the C resolver takes
    (dotted, decimal 2852039166, octal 0251.0376.0251.0376, hex 0xa9fea9fe, short forms,
    [::ffff:169.254.169.254]); None for a name."""
    host = host.strip("[]").split("%", 1)[0].rstrip(".").lower()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _IPV4_ISH.fullmatch(host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def host_problem(host: str, *, allow_private: bool) -> str | None:
    """Why a host as written may not be an upstream ("a cloud metadata address", ...), or None.
    A name is judged only if it is a metadata name: its addresses are checked when resolved."""
    if host.rstrip(".").lower() in METADATA_NAMES:
        return "a cloud metadata address"
    address = literal_address(host)
    if address is None:
        return None
    return address_problem(address, allow_private=allow_private)


def upstream_url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why `url` cannot be a provider's base URL, or None. Single-label hosts (service names)
    are accepted; the reason never quotes the URL."""
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        return "Enter a valid URL (http:// or https://, no spaces)."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return "Enter a valid URL: the host or port is malformed."
    if parts.scheme not in SCHEMES:
        return "Enter an http:// or https:// URL."
    host = parts.hostname or ""
    if not host:
        return "Enter a valid URL: it has no host."
    if parts.fragment:
        return "A base URL has no #fragment."
    if literal_address(host) is None:
        try:
            ascii_host = host.rstrip(".").encode("idna").decode("ascii")
        except UnicodeError:
            return "Enter a valid URL: the host name is malformed."
        if not all(_LABEL.fullmatch(label) for label in ascii_host.split(".")):
            return "Enter a valid URL: the host name is malformed."
    reason = host_problem(host, allow_private=allow_private)
    if reason == "a cloud metadata address":
        return "Refused: the host is a cloud metadata address."
    if reason:
        return (f"Refused: the host is {reason}. Private upstreams need UPSTREAM_ALLOW_PRIVATE=true "
                "or the provider's private-network flag (set by the operator).")
    return None
