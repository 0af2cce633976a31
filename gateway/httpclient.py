"""The gateway's upstream HTTP/1.1 client: pooled keep-alive connections, one write per
request, answers parsed by httptools (llhttp, the parser uvicorn uses for the other side).

Why not aiohttp's ClientSession here (it was the upstream client until measured again):
on this 2-core machine its per-request Python (request and response objects, header
multidicts, timers, payload wrappers, connector bookkeeping) cost ~165 us of CPU per call
more than a plain protocol on the same loop, about as much as the rest of the gateway
(bench/client_compare.py; figures in the README). The gateway needs little of what it
offers: it POSTs a body it already holds and reads one answer, whole or as a stream.

What this client does:
- HTTP/1.1 over TCP, or TLS with the system's trust store and SNI;
- keep-alive: one pool of idle connections per (scheme, host, port) per event loop, the
  most recently used first; a connection idle for KEEPALIVE seconds is closed;
- bodies delimited by Content-Length, chunked, or the connection's end; gzip and deflate;
- a connect timeout, a read timeout (the longest silence while an answer is awaited) and
  a total deadline for the whole exchange, body included: asyncio.TimeoutError;
- back-pressure: reading pauses while more than HIGH_WATER bytes wait for the consumer;
- a reused idle connection lost within STALE_WINDOW of the request and before any byte
  of the answer is replaced by a new one, once (the server timed it out as we wrote; the
  request never reached it). Later losses are not replayed: the upstream may have been
  working on the request (the gateway's fallback decides what next);
- an answer that arrives while our request body is still being written (an early 413)
  does not give its connection back to the pool.
- upstream addresses are checked after DNS (tokenbill/netguard.py): a cloud metadata address
  is refused always, a private one unless the call allows it (UpstreamRefused, logged);
- resolved names are cached DNS_TTL seconds (bounded); every address is tried, staggered
  by HAPPY_EYEBALLS_DELAY, families interleaved (RFC 8305), so a black-holed first address
  costs a quarter of a second, not the connect timeout;
- HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment, or a proxy per call: CONNECT
  tunnels for https, absolute-URI requests for http, Proxy-Authorization from the proxy
  URL's user:password;
- at most max_per_host connections per (scheme, host, port) route; calls beyond wait for
  one to come back or close;
- an answer larger than max_answer_bytes (decoded) fails with UpstreamAnswerTooLarge;
- a `User-Agent: TokenBill/<version>` header.
All of that is paid when a connection is opened: a call on a pooled keep-alive connection
does one dict lookup for its route and nothing else new.
What it does not: redirects (the gateway never follows them), HTTP/2, cookies, https://
proxies (TLS to the proxy itself).

Errors are OSError subclasses (UpstreamDisconnected, UpstreamProtocolError, and the OS's
own connection and TLS errors), ValueError for a request that cannot be written, or
asyncio.TimeoutError. The messages this module writes carry no URL and no header; the
OS's connect and TLS errors can name the address or host, so the gateway records only an
error's type name (gateway/fallback.py) and never shows its message.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import os
import socket
import ssl
import struct
import zlib
from collections import deque
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from tokenbill import netguard

try:  # Linux: bytes of a TCP socket's send queue not yet acknowledged
    import fcntl
    import termios

    _SIOCOUTQ = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover
    _SIOCOUTQ = None

KEEPALIVE = 60.0  # seconds an idle connection is kept
HIGH_WATER = 1 << 20  # bytes buffered for the consumer before reading pauses
DRAIN_SECONDS = 2.0  # release(): how long the rest of an answer may take to keep its connection
DRAIN_BYTES = 256 * 1024  # ... and how long it may be
STALE_WINDOW = 0.5  # seconds: a reused connection lost this soon after the request is retried once
DNS_TTL = 30.0  # seconds a resolved, checked name is reused (Pool(dns_ttl=...))
DNS_CACHE_SIZE = 1024  # names kept at most
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's connection attempt delay
MAX_PER_HOST = 256  # connections per route (Pool(max_per_host=...))
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # decoded bytes of one answer (Pool(max_answer_bytes=...))
MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("tokenbill")
    except Exception:  # not installed as a distribution: the source tree's pyproject.toml
        try:
            import tomllib

            return tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
                "version"]
        except Exception:
            return "0"


USER_AGENT = f"TokenBill/{_version()}"


class UpstreamDisconnected(ConnectionError):
    """The upstream closed the connection before its answer was complete."""


class UpstreamProtocolError(ConnectionError):
    """The upstream's answer is not valid HTTP/1.1."""


class UpstreamAnswerTooLarge(ConnectionError):
    """The upstream's answer is larger than the pool's max_answer_bytes."""


class UpstreamRefused(ConnectionError):
    """The upstream's address may not be contacted (a cloud metadata address; a private one
    for a call that does not allow it). Logged with the host and address for operators."""


class ProxyError(ConnectionError):
    """The proxy refused or broke the tunnel."""


class ConnectTimeout(asyncio.TimeoutError):
    """No connection within the connect timeout: the request was never sent."""


_ssl_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class _Proxy:
    __slots__ = ("url", "host", "port", "auth")

    def __init__(self, url: str):
        if "://" not in url:
            url = "http://" + url  # HTTPS_PROXY=proxy:3128, as curl reads it
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("A proxy must be an http://host:port URL.")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.auth = ""
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.auth = f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}\r\n"


class _Target:
    __slots__ = ("key", "host", "port", "tls", "head", "basic", "authority", "proxy", "allow_private", "refused")

    def __init__(self, method: str, url: str, proxy: _Proxy | None, allow_private: bool, user_agent: str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("The upstream URL is not an http(s) URL.")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.proxy = proxy
        self.allow_private = allow_private
        # Judged as written (a literal metadata address in any spelling); the addresses a name
        # resolves to are judged when a connection is opened. Through a proxy, the proxy
        # resolves the name: only this check applies.
        self.refused = netguard.host_problem(self.host, allow_private=allow_private)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{self.port}"
        if parts.port and parts.port != (443 if self.tls else 80):
            host = f"{host}:{parts.port}"
        path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        extra = f"User-Agent: {user_agent}\r\n"
        if proxy is None:
            self.key = (self.tls, self.host, self.port, allow_private)
        elif self.tls:  # a CONNECT tunnel carries one origin
            self.key = (True, self.host, self.port, allow_private, proxy.url)
        else:  # plain http through a proxy: absolute URIs, connections to the proxy shared by origins
            self.key = (False, proxy.host, proxy.port, allow_private, proxy.url)
            path = f"http://{host}{path}"
            extra += proxy.auth
        self.head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
        self.basic = None  # user:password in the URL: Basic auth, as aiohttp sent it
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.basic = "Basic " + base64.b64encode(pair).decode()


def _environ(env, name: str) -> str:
    return (env.get(name.lower()) or env.get(name.upper()) or "").strip()


def _no_proxy_match(host: str, port: int, rules: tuple[str, ...]) -> bool:
    """curl's NO_PROXY: "*", host names matching themselves and their subdomains (a leading
    dot or "*." optional), IP addresses and CIDR ranges, each optionally with :port."""
    host = host.lower().rstrip(".")
    address = netguard.literal_address(host) if any(c.isdigit() for c in host) else None
    for rule in rules:
        if rule == "*":
            return True
        name, _, rule_port = rule.rpartition(":") if rule.count(":") == 1 or rule.startswith("[") else ("", "", "")
        if name and rule_port.isdigit():
            if int(rule_port) != port:
                continue
            rule = name
        rule = rule.strip("[]")
        if address is not None:
            try:
                if address in ipaddress.ip_network(rule, strict=False):
                    return True
                continue
            except ValueError:
                pass
        rule = rule.removeprefix("*").lstrip(".").rstrip(".")
        if rule and (host == rule or host.endswith("." + rule)):
            return True
    return False


_SKIPPED = frozenset(("host", "content-length", "transfer-encoding", "connection", "user-agent",
                      "proxy-authorization"))


def _request_bytes(t: _Target, headers: dict[str, str], body: bytes) -> bytes:
    lines = [t.head]
    if t.basic is not None and not any(name.lower() == "authorization" for name in headers):
        lines.append(f"Authorization: {t.basic}\r\n")
    for name, value in headers.items():
        if name.lower() in _SKIPPED:
            continue
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
            raise ValueError("An upstream request header contains a line break.")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    try:
        return "".join(lines).encode("latin-1") + body
    except UnicodeEncodeError:
        raise ValueError("An upstream request header is not latin-1.") from None


class Response:
    """One answer: status and headers when request() returns, the body as it arrives."""

    __slots__ = ("status", "headers", "keep_alive", "complete", "_conn", "_loop", "_buf", "_size", "_exc",
                 "_waiter", "_timer", "_deadline", "_read_timeout", "_last", "_got_bytes", "_until_close",
                 "_decoder", "_interim", "_discard", "_total", "_limit", "_slow_side",
                 "_idle_timeout")

    def __init__(self, conn: "_Conn", loop, read_timeout: float, deadline: float, limit: int,
                 idle_timeout: float | None = None):
        self.status: int | None = None
        self.headers: CIMultiDictProxy | None = None
        self.keep_alive = False
        self.complete = False
        self._conn: _Conn | None = conn
        self._loop = loop
        self._buf: deque[bytes] = deque()
        self._size = 0
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._last = loop.time()
        self._got_bytes = False
        self._until_close = False
        self._decoder = None
        self._interim = False
        self._discard = False
        self._total = 0  # decoded bytes so far
        self._limit = limit
        self._slow_side = False
        self._idle_timeout = idle_timeout  # replaces read_timeout once the body's first byte is in
        self._timer = loop.call_at(min(self._last + read_timeout, deadline), self._on_timer)

    # --- the consumer's side ---------------------------------------------------------------

    @property
    def content(self) -> "Response":  # aiohttp's spelling: resp.content.readany() / iter_any()
        return self

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while True:
            if self._buf:
                parts.extend(self._buf)
                self._taken()
            if self.complete:
                return b"".join(parts)
            await self._wait()

    async def readany(self) -> bytes:
        while not self._buf:
            if self.complete:
                return b""
            await self._wait()
        data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._taken()
        return data

    async def iter_any(self):
        while True:
            data = await self.readany()
            if not data:
                return
            yield data

    def close(self) -> None:
        """Done with the answer. A complete one has already given its connection back; one
        still arriving cannot share its connection any more: it is closed."""
        self._stop_timer()
        conn, self._conn = self._conn, None
        if conn is not None and not self.complete:
            conn.abandon()
        if self._exc is None and not self.complete:
            self._exc = UpstreamDisconnected("The answer was closed before it was complete.")

    def release(self) -> None:
        """Done with an answer whose remaining bytes do not matter (a stream whose end event
        was seen, its closing chunk still on the way): they are read and dropped, and the
        connection goes back to the pool when the answer ends, if that is within
        DRAIN_SECONDS and DRAIN_BYTES; else it is closed. close() instead ends the exchange
        at once (how an upstream learns that the client left)."""
        conn = self._conn
        if self.complete or self._exc is not None or conn is None or conn.closed:
            self.close()
            return
        self._discard = True
        self._buf.clear()
        self._size = 0
        if conn.paused:
            conn.resume()
        self._deadline = min(self._deadline, self._loop.time() + DRAIN_SECONDS)
        self._stop_timer()
        self._timer = self._loop.call_at(self._deadline, self._on_timer)

    async def __aenter__(self) -> "Response":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    async def _wait(self) -> None:
        if self._exc is not None:
            raise self._exc
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._exc is not None:
            raise self._exc

    def _taken(self) -> None:
        self._buf.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()

    async def _headers(self) -> None:
        while self.status is None:
            await self._wait()

    # --- the connection's side -------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._discard:  # released: read to the end and drop, within bounds
            self._size += len(data)
            if self._size > DRAIN_BYTES:
                self._fail(UpstreamDisconnected("The rest of a released answer was too long to wait for."))
            return
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                self._fail(UpstreamProtocolError("The upstream's compressed answer is corrupt."))
                return
            if not data:
                return
        self._total += len(data)
        if self._total > self._limit:
            self._fail(UpstreamAnswerTooLarge("The upstream's answer is larger than the size limit."))
            return
        self._buf.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            if not self._decoder.eof and not self._discard:
                self._fail(UpstreamProtocolError("The upstream's compressed answer is cut short."))
                return
            tail = self._decoder.flush()
            if tail and not self._discard:
                self._buf.append(tail)
        self.complete = True
        self._stop_timer()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done(self)
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.complete or self._exc is not None:
            return
        self._exc = exc
        self._stop_timer()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abandon()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.complete or self._exc is not None:
            return
        now = self._loop.time()
        if now >= self._deadline:
            self._fail(asyncio.TimeoutError())
            return
        conn = self._conn
        if conn is not None and (conn.paused or _uploading(conn.transport)):
            self._last = now  # we are the slow side (reading paused, or our body still uploading)
            self._slow_side = True
        elif self._slow_side:
            # Our side just stopped being slow: the silence counts from now. The kernel's send
            # queue empties once the peer's receive buffer (megabytes on a fast link) holds the
            # rest, before the upstream has read it: that is not the upstream's silence yet.
            self._slow_side = False
            self._last = now
        if now - self._last >= self._read_timeout:
            self._fail(asyncio.TimeoutError())
            return
        self._timer = self._loop.call_at(min(self._last + self._read_timeout, self._deadline), self._on_timer)


def _uploading(transport) -> bool:
    """Is our request still leaving: bytes in the transport's buffer, or in the kernel's send
    queue not yet acknowledged (SIOCOUTQ; asked only when a read timer fires)."""
    if transport.get_write_buffer_size():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None or _SIOCOUTQ is None:
        return False
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0] > 0
    except (OSError, ValueError):
        return False


class _Conn(asyncio.Protocol):
    def __init__(self, pool: "Pool", key: tuple):
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: Response | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, payload: bytes, read_timeout: float, deadline: float, idle_timeout: float | None = None) -> Response:
        resp = self.resp = Response(self, self.pool.loop, read_timeout, deadline, self.pool.max_answer_bytes, idle_timeout)
        self.transport.write(payload)
        return resp

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for: the connection cannot be trusted
            self.abandon()
            return
        resp._last = self.pool.loop.time()
        resp._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(resp, UpstreamProtocolError("The upstream switched protocols."))
        except httptools.HttpParserError:  # also bytes after a complete answer (parsed with no resp)
            self._broken(resp, UpstreamProtocolError("The upstream's answer is not valid HTTP."))

    def _broken(self, resp: Response, exc: Exception) -> None:
        resp._fail(exc)  # no-op for an answer that was complete
        self.abandon()  # either way this connection's bytes cannot be trusted any more

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.forget(self)
        resp, self.resp = self.resp, None
        if resp is None or resp.complete:
            return
        if exc is None and resp._until_close and resp.status is not None and not resp._interim:
            resp._finish()  # a body delimited by the connection's end (a clean one, not a reset)
        else:
            resp._fail(UpstreamDisconnected("The upstream closed the connection before its answer was complete."))

    # httptools callbacks
    def on_message_begin(self) -> None:
        resp = self.resp
        if resp is None or resp.complete:  # an answer nobody asked for (after a complete one)
            raise UpstreamProtocolError("The upstream sent an answer nobody asked for.")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise UpstreamProtocolError("The upstream's answer headers are too long.")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        resp = self.resp
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        self._head_bytes = 0
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the answer follows
            resp._interim = True
            return
        resp._interim = False
        resp.status = status
        resp.headers = h = CIMultiDictProxy(CIMultiDict(headers))
        resp.keep_alive = self.parser.should_keep_alive()
        resp._until_close = ("content-length" not in h and "chunked" not in h.get("transfer-encoding", "").lower()
                             and status not in (204, 304))
        encoding = h.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            resp._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        elif encoding not in ("", "identity"):
            resp._fail(UpstreamProtocolError("The upstream's answer uses an unsupported content encoding."))
            return
        length = h.get("content-length")  # (llhttp has refused a malformed one already)
        if length is not None and resp._decoder is None and length.isdigit() and int(length) > resp._limit:
            resp._fail(UpstreamAnswerTooLarge("The upstream's answer is larger than the size limit."))
            return
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp._idle_timeout is not None:  # the first byte of the body: from now on, silence counts
            resp._read_timeout, resp._idle_timeout = resp._idle_timeout, None
            resp._stop_timer()
            resp._timer = resp._loop.call_at(min(resp._last + resp._read_timeout, resp._deadline), resp._on_timer)
        resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or resp._interim:
            return
        resp._finish()

    # pool side
    def done(self, resp: Response) -> None:
        """The answer is all here: back to the pool if the server keeps the connection."""
        if self.resp is resp:
            self.resp = None
        if self.paused:
            self.resume()
        if (resp.keep_alive and not self.closed and not self.transport.is_closing()
                and not self.transport.get_write_buffer_size()):  # an early answer: our body still going out
            self.pool.put(self)
        else:  # the server closes it (Connection: close, HTTP/1.0): close our side cleanly
            self.closed = True
            self.pool.forget(self)
            self.transport.close()

    def abandon(self) -> None:
        self.closed = True
        self.paused = False
        resp, self.resp = self.resp, None
        if resp is not None and not resp.complete and resp._exc is None:
            resp._conn = None  # (it is this connection: nothing to abandon twice)
            resp._fail(UpstreamDisconnected("The connection was closed before the answer was complete."))
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self.closed:
                self.transport.resume_reading()


class Pool:
    """Connections of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_per_host: int = MAX_PER_HOST,
                 max_answer_bytes: int = MAX_ANSWER_BYTES, dns_ttl: float = DNS_TTL,
                 happy_eyeballs_delay: float = HAPPY_EYEBALLS_DELAY, user_agent: str = USER_AGENT,
                 environ=None):
        self.loop = loop
        self.idle: dict[tuple, deque[_Conn]] = {}
        self.open: set[_Conn] = set()
        self.max_per_host = max(1, max_per_host)
        self.max_answer_bytes = max_answer_bytes
        self.dns_ttl = dns_ttl
        self.happy_eyeballs_delay = happy_eyeballs_delay
        self.user_agent = user_agent
        self.resolver = loop.getaddrinfo  # (host, port, type=...) -> getaddrinfo's list; tests replace it
        self._dns: dict[tuple, tuple[float, list]] = {}
        self._targets: dict[tuple, _Target] = {}
        self._count: dict[tuple, int] = {}  # connections per route: open, or being opened
        self._waiters: dict[tuple, deque[asyncio.Future]] = {}
        env = os.environ if environ is None else environ
        self._env_proxy = {False: _environ(env, "http_proxy"), True: _environ(env, "https_proxy")}
        self._no_proxy = tuple(r.strip().lower() for r in _environ(env, "no_proxy").split(",") if r.strip())

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes | None, *,
                      connect_timeout: float, read_timeout: float, total: float, proxy: str | None = None,
                      allow_private: bool = True, idle_timeout: float | None = None) -> Response:
        """Send; return once the status and headers are in (the body follows).

        proxy: None = the environment's HTTPS_PROXY / HTTP_PROXY / NO_PROXY; "direct" = none;
        else an http://[user:password@]host:port proxy. allow_private: may the upstream be a
        private, loopback or link-local address (metadata addresses never are). read_timeout
        runs until the body's first byte, idle_timeout (if given) between its later bytes;
        a connect timeout raises ConnectTimeout (the request was never sent)."""
        t = self._targets.get((method, url, proxy, allow_private))
        if t is None:
            t = self._target(method, url, proxy, allow_private)
        payload = _request_bytes(t, headers, body or b"")
        deadline = self.loop.time() + total
        for retry in (False, True):
            conn = None if retry else self._take(t.key)
            reused = conn is not None
            if conn is None:
                conn, reused = await self._acquire(t, connect_timeout, deadline)
            sent_at = self.loop.time()
            resp = conn.send(payload, read_timeout, deadline, idle_timeout)
            try:
                await resp._headers()
            except UpstreamDisconnected:
                if reused and not resp._got_bytes and self.loop.time() - sent_at < STALE_WINDOW:
                    # An idle connection the server had closed as we wrote: the request did not
                    # reach it. Once more, on a new connection. A connection that dies later
                    # may have had the request worked on: not replayed (fallback decides).
                    continue
                raise
            except BaseException:
                resp.close()
                raise
            return resp
        raise UpstreamDisconnected("The upstream closed the connection before its answer was complete.")

    def _target(self, method: str, url: str, proxy: str | None, allow_private: bool) -> _Target:
        # Parsing a URL and choosing its proxy is a visible share of a call's cost; upstream URLs repeat.
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        chosen = None
        if proxy is None:
            env_proxy = self._env_proxy[tls]
            if env_proxy and parts.hostname and not _no_proxy_match(parts.hostname, parts.port or (443 if tls else 80),
                                                                   self._no_proxy):
                chosen = _Proxy(env_proxy)
        elif proxy and proxy != "direct":
            chosen = _Proxy(proxy)
        t = _Target(method, url, chosen, allow_private, self.user_agent)
        if len(self._targets) > 4096:
            self._targets.clear()
        self._targets[(method, url, proxy, allow_private)] = t
        return t

    def _take(self, key: tuple) -> _Conn | None:
        idle = self.idle.get(key)
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be timed out
            if conn.closed or conn.transport.is_closing():
                continue
            if now - conn.idle_since > KEEPALIVE:
                conn.abandon()
                continue
            return conn
        return None

    async def _acquire(self, t: _Target, connect_timeout: float, deadline: float) -> tuple[_Conn, bool]:
        """A new connection for t's route, once the route has fewer than max_per_host; until
        then, wait (bounded by the call's deadline) for one handed back (reused) or closed."""
        key = t.key
        while self._count.get(key, 0) >= self.max_per_host:
            waiter = self.loop.create_future()
            self._waiters.setdefault(key, deque()).append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await waiter
            except BaseException:  # timed out or cancelled: a connection handed over meanwhile goes back
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None and waiter.result():
                    self.put(waiter.result())
                raise
            finally:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    if waiter in waiters:
                        waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[key]
            if conn is not None:
                return conn, True
        self._count[key] = self._count.get(key, 0) + 1
        try:
            conn = await self._connect(t, max(min(connect_timeout, deadline - self.loop.time()), 0.001))
        except BaseException:
            self._slot_freed(key)
            raise
        return conn, False

    def _slot_freed(self, key: tuple) -> None:
        n = self._count.get(key, 0) - 1
        if n > 0:
            self._count[key] = n
        else:
            self._count.pop(key, None)
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # open one
                break

    async def _connect(self, t: _Target, timeout: float) -> _Conn:
        if t.refused:
            log.warning("upstream %s:%s refused: the host is %s", t.host, t.port, t.refused)
            raise UpstreamRefused(f"The upstream host is {t.refused}.")
        tls = _tls() if t.tls else None
        try:
            async with asyncio.timeout(timeout):
                if t.proxy is None:
                    sock = await self._open(t.host, t.port, t.allow_private)
                else:  # the operator's proxy: on a private network as a rule; never a metadata address
                    sock = await self._open(t.proxy.host, t.proxy.port, True)
                try:
                    if t.proxy is not None and t.tls:
                        await self._tunnel(sock, t)
                    _, conn = await self.loop.create_connection(lambda: _Conn(self, t.key), sock=sock, ssl=tls,
                                                                server_hostname=t.host if tls else None)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise ConnectTimeout() from None
        self.open.add(conn)
        return conn

    async def _addresses(self, host: str, port: int, allow_private: bool) -> list[tuple]:
        """(family, sockaddr) of every address `host` resolves to, all of them allowed; cached
        dns_ttl seconds. A name with one address that is not allowed is refused whole."""
        key = (host, port, allow_private)
        now = self.loop.time()
        hit = self._dns.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        infos = await self.resolver(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys((info[0], info[4]) for info in infos))
        for _, sockaddr in addresses:
            address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            reason = netguard.address_problem(address, allow_private=allow_private)
            if reason:
                log.warning("upstream %s:%s refused: it resolves to %s (%s)", host, port, reason, address)
                raise UpstreamRefused(f"The upstream host resolves to {reason}.")
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "The upstream host has no address.")
        if len(self._dns) >= DNS_CACHE_SIZE:
            for stale in [k for k, (expires, _) in self._dns.items() if expires <= now] or [next(iter(self._dns))]:
                del self._dns[stale]
        self._dns[key] = (now + self.dns_ttl, addresses)
        return addresses

    async def _open(self, host: str, port: int, allow_private: bool) -> socket.socket:
        """A connected TCP socket: every address tried, happy eyeballs (RFC 8305): families
        interleaved, the next attempt started after happy_eyeballs_delay or as soon as one fails,
        the first to connect wins, the others are closed."""
        addresses = _interleave(await self._addresses(host, port, allow_private))
        pending: set[asyncio.Task] = set()
        errors: list[BaseException] = []
        queue = iter(addresses)

        def start() -> bool:
            nxt = next(queue, None)
            if nxt is None:
                return False
            pending.add(self.loop.create_task(_connect_socket(self.loop, *nxt)))
            return True

        start()
        try:
            while pending:
                done, _ = await asyncio.wait(pending, timeout=self.happy_eyeballs_delay,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    start()
                    continue
                winner = None
                for task in done:
                    pending.discard(task)
                    if task.exception() is not None:
                        errors.append(task.exception())
                    elif winner is None:
                        winner = task.result()
                    else:
                        task.result().close()
                if winner is not None:
                    return winner
                start()  # one failed: the next at once
            raise errors[-1] if errors else OSError("The upstream host has no address.")
        finally:
            for task in pending:
                task.cancel()
                task.add_done_callback(_close_result)

    async def _tunnel(self, sock: socket.socket, t: _Target) -> None:
        """CONNECT t's authority through the proxy `sock` is connected to."""
        request = (f"CONNECT {t.authority} HTTP/1.1\r\nHost: {t.authority}\r\nUser-Agent: {self.user_agent}\r\n"
                   f"{t.proxy.auth}\r\n")
        await self.loop.sock_sendall(sock, request.encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await self.loop.sock_recv(sock, 4096)
            if not chunk:
                raise ProxyError("The proxy closed the connection during CONNECT.")
            head += chunk
            if len(head) > MAX_HEAD_BYTES:
                raise ProxyError("The proxy's answer to CONNECT is too long.")
        status_line = head.partition(b"\r\n")[0]
        fields = status_line.split(None, 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not fields[1].isdigit():
            raise ProxyError("The proxy's answer to CONNECT is not HTTP.")
        status = int(fields[1])
        if not 200 <= status < 300:
            raise ProxyError(f"The proxy refused the tunnel (HTTP {status}).")
        if not head.endswith(b"\r\n\r\n") or head.count(b"\r\n\r\n") != 1:
            raise ProxyError("The proxy sent bytes before the tunnel was used.")

    def put(self, conn: _Conn) -> None:
        conn.idle_since = self.loop.time()
        if self._waiters:  # a call waits for a connection of this route: it takes this one
            waiters = self._waiters.get(conn.key)
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
        idle = self.idle.get(conn.key)
        if idle is None:
            idle = self.idle[conn.key] = deque()
        idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self._slot_freed(conn.key)
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for conn in list(self.open):
            conn.abandon()
        self.idle.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(UpstreamDisconnected("The pool was closed."))
        self._waiters.clear()


def _interleave(addresses: list[tuple]) -> list[tuple]:
    """RFC 8305 section 4: alternate address families, starting with the resolver's first."""
    if len(addresses) < 2:
        return addresses
    first = [a for a in addresses if a[0] == addresses[0][0]]
    other = [a for a in addresses if a[0] != addresses[0][0]]
    out = []
    for i in range(max(len(first), len(other))):
        out.extend(x[i] for x in (first, other) if i < len(x))
    return out


async def _connect_socket(loop, family: int, sockaddr: tuple) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_result(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()
