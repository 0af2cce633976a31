"""gateway/httpclient.py against raw HTTP servers on 127.0.0.1 that script their bytes."""

from __future__ import annotations

import asyncio
import gzip
import time

import pytest

from gateway import httpclient
from gateway.httpclient import Pool, UpstreamDisconnected, UpstreamProtocolError


class RawServer:
    """Reads one request at a time (head + Content-Length body) and answers with what
    `handler(request_bytes, connection_number)` returns or does with the writer."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if await self.handler(request, number, writer) == "close":
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()  # the client went away, or the test ended while this handler slept


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


async def call(pool: Pool, url: str, body: bytes = b'{"x":1}', **timeouts):
    kw = {"connect_timeout": 5.0, "read_timeout": 5.0, "total": 10.0, **timeouts}
    return await pool.request("POST", url, {"Authorization": "Bearer sk-secret", "Content-Type": "application/json"},
                              body, **kw)


async def test_keep_alive_reuses_one_connection_and_writes_a_well_formed_request():
    async def handler(request, number, writer):
        writer.write(answer(b'{"n":%d}' % number))

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        for _ in range(3):
            async with await call(pool, server.url + "?api-version=1") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
                assert await resp.read() == b'{"n":1}'
        pool.close()
    assert server.connections == 1
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions?api-version=1 HTTP/1.1"
    assert b"Host: 127.0.0.1:%d" % server.port in lines and b"Content-Length: 7" in lines
    assert b"Authorization: Bearer sk-secret" in lines and body == b'{"x":1}'


async def test_chunked_gzip_and_close_delimited_bodies():
    payload = b'{"hello":"world"}' * 50
    packed = gzip.compress(payload)

    async def handler(request, number, writer):
        if b"/chunked" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(payload), 100):
                piece = payload[i:i + 100]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif b"/gzip" in request:
            writer.write(answer(packed, extra=b"content-encoding: gzip\r\n"))
        else:  # no length, no chunking: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + payload)
            return "close"

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/chunked", "/gzip", "/until-close", "/chunked"):
            async with await call(pool, base + path) as resp:
                assert await resp.read() == payload, path
        pool.close()
    assert server.connections == 2  # the close-delimited answer used up its connection


async def test_stream_arrives_piece_by_piece_and_back_pressure_pauses_reading(monkeypatch):
    monkeypatch.setattr(httpclient, "HIGH_WATER", 1000)
    release = asyncio.Event()

    async def handler(request, number, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        for _ in range(200):
            writer.write(b"64\r\n" + b"y" * 100 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        async with await call(pool, server.url) as resp:
            assert await resp.content.readany() == b"first"  # before the rest exists
            release.set()
            while resp._size <= 1000:
                await asyncio.sleep(0.01)
            assert resp._conn.paused  # more than HIGH_WATER waits for us: reading stopped
            rest = b"".join([chunk async for chunk in resp.content.iter_any()])
        assert rest == b"y" * 20000
        pool.close()


async def test_read_timeout_and_total_deadline_raise_timeout_errors():
    async def handler(request, number, writer):
        if b"/trickle" in request:  # never silent for long, never done
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(100):
                writer.write(b"1\r\nz\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        else:
            await asyncio.sleep(5)  # silent

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await call(pool, server.url, read_timeout=0.3)
        assert 0.25 < time.monotonic() - started < 2
        started = time.monotonic()
        resp = await call(pool, f"http://127.0.0.1:{server.port}/trickle", read_timeout=0.3, total=0.6)
        with pytest.raises(asyncio.TimeoutError):
            await resp.read()
        assert 0.5 < time.monotonic() - started < 2
        pool.close()


async def test_dropped_and_malformed_answers_raise_without_the_url_or_key():
    async def handler(request, number, writer):
        if b"/drop" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial")
            await writer.drain()
            return "close"
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        resp = await call(pool, f"http://127.0.0.1:{server.port}/drop")
        with pytest.raises(UpstreamDisconnected) as dropped:
            await resp.read()
        with pytest.raises(UpstreamProtocolError) as malformed:
            await call(pool, f"http://127.0.0.1:{server.port}/garbage")
        pool.close()
    for exc in (dropped.value, malformed.value):
        assert isinstance(exc, OSError)  # the gateway's fallback treats it as the route's failure
        assert "127.0.0.1" not in str(exc) and "sk-secret" not in str(exc) and "/drop" not in str(exc)


async def test_an_idle_connection_the_server_closed_is_replaced_once():
    async def handler(request, number, writer):
        writer.write(answer(b'{"n":%d}' % number))
        await writer.drain()
        return "close"  # keep-alive announced, then the server closes the idle connection

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        for expected in (b'{"n":1}', b'{"n":2}', b'{"n":3}'):
            async with await call(pool, server.url) as resp:
                assert await resp.read() == expected
            await asyncio.sleep(0.05)  # the server's close has arrived: that connection is not taken
        pool.close()
    assert server.connections == 3 and len(server.requests) == 3  # each request reached the server once


async def test_a_reused_connection_closed_before_any_answer_byte_is_retried_once_on_a_new_one():
    """The race the check above cannot see: the server's close crosses the next request."""
    seen: list[int] = []

    async def handler(request, number, writer):
        seen.append(number)
        if seen.count(number) == 2:
            return "close"  # the second request on this connection: closed without a byte
        writer.write(answer(b'{"n":%d}' % number))

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        for expected in (b'{"n":1}', b'{"n":2}'):
            async with await call(pool, server.url) as resp:
                assert await resp.read() == expected
        # A fresh connection that fails the same way is not retried: that is the upstream's failure.
        async def refuse(request, number, writer):
            return "close"

        server.handler = refuse
        pool.close()
        with pytest.raises(UpstreamDisconnected):
            await call(pool, server.url)
        pool.close()
    assert seen == [1, 1, 2]


async def test_connection_refused_is_an_oserror():
    pool = Pool(asyncio.get_running_loop())
    async with RawServer(None) as server:
        port = server.port
    with pytest.raises(OSError):
        await call(pool, f"http://127.0.0.1:{port}/v1")


async def test_interim_100_continue_is_skipped_and_header_injection_refused():
    async def handler(request, number, writer):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"{}", status="201 Created"))

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        async with await call(pool, server.url) as resp:
            assert resp.status == 201 and await resp.read() == b"{}"
        with pytest.raises(ValueError):
            await pool.request("POST", server.url, {"x-key": "a\r\nInjected: 1"}, b"", connect_timeout=1,
                               read_timeout=1, total=1)
        with pytest.raises(ValueError) as bad_url:
            await pool.request("POST", "ftp://secret-host/x", {}, b"", connect_timeout=1, read_timeout=1, total=1)
        assert "secret-host" not in str(bad_url.value)
        pool.close()
    assert len(server.requests) == 1


async def test_closing_an_unfinished_answer_drops_its_connection():
    async def handler(request, number, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        if number == 1:
            await asyncio.sleep(0.5)  # the client gives up before the end
        writer.write(b"0\r\n\r\n")

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        resp = await call(pool, server.url)
        assert await resp.content.readany() == b"abc"
        resp.close()
        async with await call(pool, server.url) as resp:  # a new connection, not the half-read one
            assert await resp.read() == b"abc"
        pool.close()
    assert server.connections == 2


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_https_upstream_with_certificate_verification(tmp_path, monkeypatch):
    import ssl

    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)

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

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        pool = Pool(asyncio.get_running_loop())
        with pytest.raises(ssl.SSLError):  # the system's trust store does not know this certificate
            await call(pool, url)
        trusting = ssl.create_default_context(cafile=str(cert_file))
        monkeypatch.setattr(httpclient, "_ssl_context", trusting)
        for _ in range(2):
            async with await call(pool, url) as resp:
                assert resp.status == 200 and await resp.read() == b'{"tls":true}'
        assert len(pool.open) == 1  # kept alive over TLS too
        pool.close()
    finally:
        server.close()


async def test_bytes_after_a_complete_answer_retire_the_connection():
    async def handler(request, number, writer):
        writer.write(answer(b'{"n":%d}' % number) + b"GARBAGE THAT IS NOT HTTP\r\n\r\n")

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        for expected in (b'{"n":1}', b'{"n":2}'):
            async with await call(pool, server.url) as resp:
                assert await resp.read() == expected
            await asyncio.sleep(0.05)
        pool.close()
    assert server.connections == 2  # the first connection was not reused after the garbage


async def test_release_keeps_the_connection_when_the_rest_arrives_and_close_does_not(monkeypatch):
    async def handler(request, number, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1 if b"/slow" not in request else 1.0)
        writer.write(b"4\r\ntail\r\n0\r\n\r\n")  # the stream's closing bytes come later

    monkeypatch.setattr(httpclient, "DRAIN_SECONDS", 0.5)
    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        base = f"http://127.0.0.1:{server.port}"
        resp = await call(pool, base + "/fast")
        assert await resp.readany() == b"data: [DONE]\n\n"
        resp.release()  # the end event was seen: the rest is dropped, the connection kept
        await asyncio.sleep(0.3)
        assert resp.complete and len(pool.open) == 1 and sum(map(len, pool.idle.values())) == 1
        resp = await call(pool, base + "/slow")  # on the same connection; its rest is too slow
        assert server.connections == 1
        await resp.readany()
        resp.release()
        await asyncio.sleep(0.7)
        assert not pool.open  # given up after DRAIN_SECONDS: closed, not pooled
        resp = await call(pool, base + "/fast")
        await resp.readany()
        resp.close()  # close: at once, whatever follows
        assert not pool.open
        pool.close()
    assert server.connections == 2  # the first (kept after /fast, given up on /slow), then a new one


# --- regressions from the review of this client ------------------------------------------------

async def test_the_start_of_an_answer_nobody_asked_for_never_becomes_the_next_calls_answer():
    async def handler(request, number, writer):
        if number == 1:  # answer 1 and, in the same packet, the head of an answer nobody asked for
            writer.write(answer(b"first!") + b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n")
        else:
            writer.write(answer(b"second"))

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        async with await call(pool, server.url) as resp:
            assert await resp.read() == b"first!"
        async with await call(pool, server.url) as resp:
            assert await resp.read() == b"second"  # not b"stray-bytes" completing the stray head
        pool.close()
    assert server.connections == 2


async def test_a_reused_connection_lost_long_after_the_request_is_not_replayed(monkeypatch):
    monkeypatch.setattr(httpclient, "STALE_WINDOW", 0.2)

    async def handler(request, number, writer):
        if len(server.requests) == 1:
            writer.write(answer(b"{}"))
            return None
        await asyncio.sleep(0.5)  # the upstream works on it, then its worker dies without a byte
        return "close"

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        async with await call(pool, server.url) as resp:
            await resp.read()
        with pytest.raises(UpstreamDisconnected):
            await call(pool, server.url)
        pool.close()
    assert len(server.requests) == 2  # sent once: a provider would not run (and bill) it twice


async def test_the_retry_uses_a_new_connection_not_another_stale_one():
    per_connection: dict[int, int] = {}

    async def handler(request, number, writer):
        per_connection[number] = per_connection.get(number, 0) + 1
        if per_connection[number] == 2:
            return "close"  # every connection: closed at its second request, without a byte
        writer.write(answer(b'{"n":%d}' % number))

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        first = await asyncio.gather(*(call(pool, server.url) for _ in range(3)))
        for resp in first:
            await resp.read()
        assert len(pool.open) == 3  # three idle connections, each stale on its next use
        async with await call(pool, server.url) as resp:
            assert await resp.read() == b'{"n":4}'  # one stale connection, then a NEW one
        pool.close()
    assert per_connection[4] == 1 and sum(1 for n in per_connection.values() if n == 2) == 1


async def test_an_early_answer_during_an_upload_does_not_pool_the_connection():
    class EarlyServer(RawServer):
        async def _serve(self, reader, writer):  # answers after the head, never reads the body
            self.connections += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(b"{}", status="413 Payload Too Large"))
            await writer.drain()
            await asyncio.sleep(2)
            writer.close()

    async with EarlyServer(None) as server:
        pool = Pool(asyncio.get_running_loop())
        async with await call(pool, server.url, body=b"x" * (32 << 20)) as resp:
            assert resp.status == 413 and await resp.read() == b"{}"
        assert not any(pool.idle.values())  # our body was still going out: not reusable
        pool.close()


async def test_an_upload_slower_than_the_read_timeout_is_not_a_timeout():
    class SlowReader(RawServer):
        async def _serve(self, reader, writer):
            self.connections += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            got = 0
            while got < length:  # a slow link, ~2 MB/s
                got += len(await reader.read(min(65536, length - got)))
                await asyncio.sleep(0.03)
            writer.write(answer(b"ok"))
            await writer.drain()

    async with SlowReader(None) as server:
        pool = Pool(asyncio.get_running_loop())
        async with await call(pool, server.url, body=b"x" * (6 << 20), read_timeout=1.0, total=30) as resp:
            assert await resp.read() == b"ok"
        pool.close()


async def test_a_reset_is_not_the_end_of_a_close_delimited_body_nor_a_cut_gzip_complete():
    import socket
    import struct

    async def handler(request, number, writer):
        if b"/gzip" in request:
            packed = gzip.compress(bytes(range(256)) * 40)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nconnection: close\r\n\r\n"
                         + packed[:len(packed) // 2])
            await writer.drain()
            return "close"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {}\n\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN
        return "close"

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        resp = await call(pool, server.url)
        with pytest.raises(UpstreamDisconnected):
            await resp.read()
        resp = await call(pool, f"http://127.0.0.1:{server.port}/gzip")
        with pytest.raises(UpstreamProtocolError):
            await resp.read()
        pool.close()


async def test_closing_the_pool_fails_answers_in_flight_at_once():
    async def handler(request, number, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        resp = await call(pool, server.url, read_timeout=4)
        assert await resp.readany() == b"abc"
        pool.close()  # what the gateway's shutdown does
        started = time.monotonic()
        with pytest.raises(UpstreamDisconnected):
            await resp.readany()
        assert time.monotonic() - started < 1  # not after the read timeout


async def test_credentials_in_the_url_are_sent_as_basic_auth_and_kept_out_of_errors():
    import base64

    async def handler(request, number, writer):
        writer.write(answer(b"{}"))

    async with RawServer(handler) as server:
        pool = Pool(asyncio.get_running_loop())
        url = f"http://us%40er:p%3Ass@127.0.0.1:{server.port}/v1"
        async with await pool.request("POST", url, {}, b"", connect_timeout=1, read_timeout=1, total=1) as resp:
            await resp.read()
        pool.close()
    assert b"Authorization: Basic " + base64.b64encode(b"us@er:p:ss") in server.requests[0]
