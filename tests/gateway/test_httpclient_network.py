"""gateway/httpclient.py on real networks: addresses checked after DNS, the DNS cache, happy
eyeballs past a black-holed first address, HTTPS_PROXY / HTTP_PROXY / NO_PROXY through a
CONNECT proxy fake, the per-host connection cap, the answer size limit, the User-Agent."""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import socket
import ssl

import pytest

from gateway import httpclient
from gateway.httpclient import Pool, ProxyError, UpstreamAnswerTooLarge, UpstreamRefused
from tests.gateway.test_httpclient import RawServer, _self_signed, answer, call


def resolving_to(*addresses, calls=None):
    """A pool resolver that answers `addresses` for every name (and counts its calls)."""
    async def resolve(host, port, type=0):  # noqa: A002 (getaddrinfo's keyword)
        if calls is not None:
            calls.append(host)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port) if ":" not in a else (a, port, 0, 0)) for a in addresses]
    return resolve


async def ok(request, number, writer):
    writer.write(answer(b'{"ok":true}'))


# --- addresses checked after DNS --------------------------------------------------------

@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"])
async def test_a_name_resolving_to_a_metadata_address_is_refused_at_connect_and_logged(address, caplog):
    pool = Pool(asyncio.get_running_loop())
    pool.resolver = resolving_to(address)
    with caplog.at_level(logging.WARNING, logger="gateway.httpclient"):
        with pytest.raises(UpstreamRefused, match="cloud metadata address") as refused:
            await call(pool, "http://innocent.example:8000/v1/chat/completions", allow_private=True)
    assert isinstance(refused.value, OSError)  # an upstream failure to the gateway's fallback
    assert "innocent.example" not in str(refused.value)  # messages carry no host; the log does
    assert any("innocent.example" in r.getMessage() and "cloud metadata" in r.getMessage() for r in caplog.records)
    pool.close()


async def test_literal_metadata_urls_are_refused_before_any_connection():
    pool = Pool(asyncio.get_running_loop())
    pool.resolver = resolving_to("127.0.0.1")  # (never asked)
    for url in ("http://0xa9fea9fe/v1", "http://[::ffff:a9fe:a9fe]/v1", "http://metadata.google.internal/v1"):
        with pytest.raises(UpstreamRefused, match="cloud metadata address"):
            await call(pool, url, allow_private=True)
    assert not pool.open


async def test_private_addresses_only_where_the_call_allows_them():
    async with RawServer(ok) as server:
        pool = Pool(asyncio.get_running_loop())
        url = f"http://vllm:{server.port}/v1/chat/completions"
        pool.resolver = resolving_to("127.0.0.1")
        with pytest.raises(UpstreamRefused, match="loopback"):
            await call(pool, url, allow_private=False)
        async with await call(pool, url, allow_private=True) as resp:
            assert await resp.read() == b'{"ok":true}'
        # a connection opened for an allowed call is not lent to a call that is not allowed
        with pytest.raises(UpstreamRefused):
            await call(pool, url, allow_private=False)
        pool.close()
    assert server.connections == 1


# --- the DNS cache ------------------------------------------------------------------------

async def test_resolved_names_are_cached_for_the_ttl_and_pooled_calls_do_not_resolve():
    calls = []
    async with RawServer(ok) as server:
        pool = Pool(asyncio.get_running_loop(), dns_ttl=3600)
        pool.resolver = resolving_to("127.0.0.1", calls=calls)
        url = f"http://vllm:{server.port}/v1/chat/completions"
        for _ in range(3):  # keep-alive: one connection, one resolution
            async with await call(pool, url) as resp:
                await resp.read()
        for conn in list(pool.open):  # new connections within the TTL: still one resolution
            conn.abandon()
        async with await call(pool, url) as resp:
            await resp.read()
        assert calls == ["vllm"] and server.connections == 2
        pool._dns = {key: (0.0, hit) for key, (_, hit) in pool._dns.items()}  # the TTL is over: resolved again
        for conn in list(pool.open):
            conn.abandon()
        async with await call(pool, url) as resp:
            await resp.read()
        assert calls == ["vllm", "vllm"]
        pool.close()


async def test_the_dns_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(httpclient, "DNS_CACHE_SIZE", 4)
    pool = Pool(asyncio.get_running_loop(), dns_ttl=3600)
    pool.resolver = resolving_to("127.0.0.1")
    for i in range(10):
        await pool._addresses(f"host{i}", 80, True)
    assert len(pool._dns) <= 4 and ("host9", 80, True) in pool._dns


# --- happy eyeballs -------------------------------------------------------------------------

def _black_hole(port: int):
    """A listener on 127.0.0.2:port whose accept queue is full: the kernel drops further SYNs,
    so a connect to it hangs like one to a black-holed address."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", port))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.2", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.2", port))
        hangs = False
    except (socket.timeout, TimeoutError):
        hangs = True
    probe.close()
    assert hangs, "the black hole does not hold: this test would prove nothing"
    return listener, fillers


async def test_an_unreachable_first_address_falls_through_to_the_next():
    async with RawServer(ok) as server:
        listener, fillers = _black_hole(server.port)
        try:
            url = f"http://dual:{server.port}/v1/chat/completions"
            # one attempt at a time (no stagger before the connect timeout): the black hole eats it
            slow = Pool(asyncio.get_running_loop(), happy_eyeballs_delay=60)
            slow.resolver = resolving_to("127.0.0.2", "127.0.0.1")
            with pytest.raises(asyncio.TimeoutError):
                await call(slow, url, connect_timeout=1.0)
            slow.close()
            # happy eyeballs: the second address is tried after the attempt delay and wins
            pool = Pool(asyncio.get_running_loop(), happy_eyeballs_delay=0.05)
            pool.resolver = resolving_to("127.0.0.2", "127.0.0.1")
            async with await call(pool, url, connect_timeout=20.0) as resp:
                assert await resp.read() == b'{"ok":true}'
            assert len(pool.open) == 1
            pool.close()
        finally:
            listener.close()
            for s in fillers:
                s.close()
    assert server.connections == 1


async def test_a_refused_first_address_is_followed_at_once_and_families_interleave():
    async with RawServer(ok) as server:
        pool = Pool(asyncio.get_running_loop(), happy_eyeballs_delay=60)  # no stagger: only failures move on
        closed = socket.socket()
        closed.bind(("127.0.0.3", server.port))  # bound, not listening: connection refused
        try:
            pool.resolver = resolving_to("127.0.0.3", "127.0.0.1")
            async with await call(pool, f"http://dual:{server.port}/v1/chat/completions", connect_timeout=20.0) as r:
                assert r.status == 200
        finally:
            closed.close()
            pool.close()
    v6, v4 = (socket.AF_INET6, ("::1", 1)), (socket.AF_INET, ("1.1.1.1", 1))
    assert httpclient._interleave([v6, v6, v6, v4]) == [v6, v4, v6, v6]


# --- proxies ----------------------------------------------------------------------------------

class FakeProxy:
    """An HTTP proxy: CONNECT tunnels to 127.0.0.1, plain requests answered by itself. Keeps
    every request head it saw."""

    def __init__(self, status: int = 200):
        self.heads: list[bytes] = []
        self.status = status

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if not head.startswith(b"CONNECT "):
                while True:
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), b"0"))
                    await reader.readexactly(length)
                    writer.write(answer(b'{"via":"proxy"}'))
                    head = await reader.readuntil(b"\r\n\r\n")
                    self.heads.append(head)
            if self.status != 200:
                writer.write(b"HTTP/1.1 %d No\r\ncontent-length: 0\r\n\r\n" % self.status)
                await writer.drain()
                writer.close()
                return
            port = int(head.split(b" ")[1].rsplit(b":", 1)[1])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src, dst):
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                finally:
                    dst.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def _tls_server(tmp_path, monkeypatch):
    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    monkeypatch.setattr(httpclient, "_ssl_context", ssl.create_default_context(cafile=str(cert_file)))

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                await reader.readexactly(length)
                writer.write(answer(b'{"tls":true}'))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)


async def test_https_goes_through_the_environments_proxy_with_connect_and_proxy_auth(tmp_path, monkeypatch):
    upstream = await _tls_server(tmp_path, monkeypatch)
    port = upstream.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{port}/v1/chat/completions"
    try:
        async with FakeProxy() as proxy:
            environ = {"HTTPS_PROXY": f"http://ops:s3cret@127.0.0.1:{proxy.port}", "NO_PROXY": "internal.example"}
            pool = Pool(asyncio.get_running_loop(), environ=environ)
            for _ in range(2):
                async with await call(pool, url) as resp:  # TLS end to end, through the tunnel
                    assert resp.status == 200 and await resp.read() == b'{"tls":true}'
            pool.close()
        assert len(proxy.heads) == 1  # one tunnel, kept alive
        lines = proxy.heads[0].split(b"\r\n")
        assert lines[0] == b"CONNECT 127.0.0.1:%d HTTP/1.1" % port
        assert b"Proxy-Authorization: Basic " + base64.b64encode(b"ops:s3cret") in lines
        assert any(line.startswith(b"User-Agent: TokenBill/") for line in lines)
    finally:
        upstream.close()


async def test_plain_http_through_a_proxy_uses_absolute_uris_and_no_proxy_and_direct_bypass_it():
    async with RawServer(ok) as server, FakeProxy() as proxy:
        environ = {"http_proxy": f"http://u:p@127.0.0.1:{proxy.port}", "no_proxy": "localhost,.svc.cluster.local"}
        pool = Pool(asyncio.get_running_loop(), environ=environ)
        async with await call(pool, server.url) as resp:
            assert await resp.read() == b'{"via":"proxy"}'
        lines = proxy.heads[0].split(b"\r\n")
        assert lines[0] == b"POST http://127.0.0.1:%d/v1/chat/completions HTTP/1.1" % server.port
        assert b"Proxy-Authorization: Basic " + base64.b64encode(b"u:p") in lines
        assert server.requests == []
        # NO_PROXY: names and their subdomains, and CIDR ranges
        pool.resolver = resolving_to("127.0.0.1")
        async with await call(pool, f"http://vllm.ns.svc.cluster.local:{server.port}/v1/x") as resp:
            assert await resp.read() == b'{"ok":true}'
        cidr = Pool(asyncio.get_running_loop(), environ={**environ, "no_proxy": "127.0.0.0/8"})
        async with await call(cidr, server.url) as resp:
            assert await resp.read() == b'{"ok":true}'
        # a per-call "direct" overrides the environment
        async with await call(pool, server.url, proxy="direct") as resp:
            assert await resp.read() == b'{"ok":true}'
        assert len(server.requests) == 3 and len(proxy.heads) == 1
        pool.close()
        cidr.close()


async def test_a_per_call_proxy_and_a_proxy_that_refuses_the_tunnel(tmp_path, monkeypatch):
    upstream = await _tls_server(tmp_path, monkeypatch)
    url = f"https://127.0.0.1:{upstream.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        async with FakeProxy() as proxy, FakeProxy(status=407) as refusing:
            pool = Pool(asyncio.get_running_loop(), environ={})
            async with await call(pool, url, proxy=proxy.url) as resp:
                assert await resp.read() == b'{"tls":true}'
            assert proxy.heads[0].startswith(b"CONNECT ")
            with pytest.raises(ProxyError, match="407"):
                await call(pool, url, proxy=refusing.url)
            pool.close()
    finally:
        upstream.close()


# --- the per-host cap, the size limit, the User-Agent -------------------------------------------

async def test_calls_beyond_the_per_host_cap_wait_for_a_connection():
    gate = asyncio.Event()

    async def slow(request, number, writer):
        await gate.wait()
        writer.write(answer(b'{"ok":true}'))

    async with RawServer(slow) as server:
        pool = Pool(asyncio.get_running_loop(), max_per_host=2)

        async def one():
            async with await call(pool, server.url) as resp:
                return await resp.read()

        tasks = [asyncio.create_task(one()) for _ in range(5)]
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert server.connections == 2 and len(pool.open) == 2  # three calls wait
        gate.set()
        assert await asyncio.gather(*tasks) == [b'{"ok":true}'] * 5
        assert server.connections == 2
        pool.close()


async def test_a_waiting_call_gets_a_new_connection_when_one_closes():
    async def closing(request, number, writer):
        writer.write(answer(b'{"ok":true}', extra=b"connection: close\r\n"))
        return "close"

    async with RawServer(closing) as server:
        pool = Pool(asyncio.get_running_loop(), max_per_host=1)

        async def one():
            async with await call(pool, server.url) as resp:
                return await resp.read()

        assert await asyncio.gather(*(one() for _ in range(3))) == [b'{"ok":true}'] * 3
        assert server.connections == 3 and not pool._count and not pool._waiters
        pool.close()


async def test_answers_over_the_size_limit_fail_clearly():
    big = b"x" * 5000

    async def handler(request, number, writer):
        if b"declared" in request:
            writer.write(answer(big))
        elif b"chunked" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(10):
                writer.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:  # a small gzip body that inflates past the limit
            body = gzip.compress(b"z" * 100_000)
            writer.write(answer(body, extra=b"content-encoding: gzip\r\n"))

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop(), max_answer_bytes=4096)
        with pytest.raises(UpstreamAnswerTooLarge):
            await call(pool, server.url, body=b"declared")
        for body in (b"chunked", b"gzip"):  # found while the body arrives (before or after the headers return)
            with pytest.raises(UpstreamAnswerTooLarge, match="size limit"):
                async with await call(pool, server.url, body=body) as resp:
                    await resp.read()
        assert not pool.open  # those connections are not reused
        async with await call(Pool(asyncio.get_running_loop()), server.url, body=b"declared") as resp:
            assert await resp.read() == big  # under the default limit
        pool.close()


async def test_requests_carry_the_tokenbill_user_agent_and_not_the_callers():
    async with RawServer(ok) as server:
        pool = Pool(asyncio.get_running_loop())
        resp = await pool.request("POST", server.url, {"User-Agent": "spoof/1"}, b"{}", connect_timeout=5,
                                  read_timeout=5, total=10)
        await resp.read()
        pool.close()
    lines = server.requests[0].split(b"\r\n")
    assert [line for line in lines if line.lower().startswith(b"user-agent:")] == [
        f"User-Agent: {httpclient.USER_AGENT}".encode()]
    assert httpclient.USER_AGENT.startswith("TokenBill/") and httpclient.USER_AGENT != "TokenBill/0"


async def test_a_waiting_call_that_gives_up_does_not_strand_a_connection_handed_to_it():
    async with RawServer(ok) as server:
        pool = Pool(asyncio.get_running_loop(), max_per_host=1)
        async with await call(pool, server.url) as resp:  # one connection, now idle
            await resp.read()
        conn = pool._take(next(iter(pool.idle)))  # busy, as if another call held it
        waiter = asyncio.create_task(call(pool, server.url))
        await asyncio.sleep(0.05)
        assert pool._waiters  # the call waits for the only slot
        pool.put(conn)  # handed to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert list(pool.idle[conn.key]) == [conn]  # back in the pool, not lost with its slot
        async with await call(pool, server.url) as resp:
            assert await resp.read() == b'{"ok":true}'
        pool.close()
    assert server.connections == 1
