"""tokenbill/server_protocol.py: the writes of one loop turn leave in one send, unchanged."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as UvicornsProtocol

from tokenbill.server_protocol import CoalescingTransport, HttpToolsProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed or self.aborted

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def get_write_buffer_size(self):
        return 7

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_turn_leave_in_one_send_in_order():
    real = RecordingTransport()
    t = CoalescingTransport(real, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(memoryview(b"body"))
    t.writelines([b"-", b"tail"])
    t.write(b"")
    assert real.writes == [] and t.get_write_buffer_size() == 7 + 19 + 4 + 5
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody-tail"]
    t.write(b"next turn")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next turn"]
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real transport's


async def test_close_sends_what_is_pending_abort_drops_it():
    real = RecordingTransport()
    t = CoalescingTransport(real, asyncio.get_running_loop())
    t.write(b"last words")
    t.close()
    assert real.writes == [b"last words"] and real.closed
    t.write(b"after close")
    await asyncio.sleep(0)
    assert real.writes == [b"last words"]  # ignored, as a closed transport does

    real = RecordingTransport()
    t = CoalescingTransport(real, asyncio.get_running_loop())
    t.write(b"dropped")
    t.abort()
    await asyncio.sleep(0)
    assert real.writes == [] and real.aborted


SENDS: list[bytes] = []


class _Counting:
    """The real socket transport, with every write it is asked for recorded."""

    def __init__(self, transport):
        self._t = transport

    def write(self, data):
        SENDS.append(bytes(data))
        self._t.write(data)

    def __getattr__(self, name):
        return getattr(self._t, name)


class CountingCoalescing(HttpToolsProtocol):
    def connection_made(self, transport):
        super().connection_made(_Counting(transport))


class CountingUvicorn(UvicornsProtocol):
    def connection_made(self, transport):
        super().connection_made(_Counting(transport))


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    body = b"x" * 5000 if scope["path"] == "/big" else b"hello"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve(protocol):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", loop="asyncio",
                            http=protocol, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


@pytest.mark.parametrize("protocol, sends_per_answer", [(CountingCoalescing, 1), (CountingUvicorn, 2)])
def test_each_answer_is_one_send(protocol, sends_per_answer):
    """uvicorn's own protocol sends the status line and headers, then the body: two
    system calls per answer. Through CoalescingTransport: one, with the same bytes."""
    SENDS.clear()
    server, thread, port = serve(protocol)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for path in ("/", "/big", "/"):  # keep-alive: several answers on one connection
                r = client.get(path)
                assert r.status_code == 200
                assert r.content == (b"x" * 5000 if path == "/big" else b"hello")
    finally:
        server.should_exit = True
        thread.join(10)
    assert len(SENDS) == 3 * sends_per_answer
    answers = SENDS if sends_per_answer == 1 else [a + b for a, b in zip(SENDS[::2], SENDS[1::2])]
    assert [a.split(b"\r\n\r\n", 1)[1] for a in answers] == [b"hello", b"x" * 5000, b"hello"]


def test_protocol_class_is_uvicorns_with_the_transport_wrapped():
    assert issubclass(HttpToolsProtocol, UvicornsProtocol)
    assert uvicorn.Config(app, http="tokenbill.server_protocol:HttpToolsProtocol")
