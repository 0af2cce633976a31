"""uvicorn's httptools protocol, with the writes of one loop turn sent in one system call.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and the body with `http.response.body`: two sends for every
non-streamed answer, and two before a stream's first byte reaches the client. On this
kind of machine a loopback send costs tens of microseconds (the kernel runs the
receiver's side of TCP in the sender's call), so the gateway's answers paid one more
than they need. Here every write made during one turn of the event loop is joined and
sent once, at the end of that turn: nothing is held longer than the turn, and the bytes
and their order are unchanged. Measured with `make bench` (see bench/README.md).

Serve with `uvicorn tokenbill.asgi:application --http tokenbill.server_protocol:HttpToolsProtocol`
(scripts/run.py, the bench and docker-compose.yml do).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornHttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes of one loop turn leave together; the rest is delegated.

    close() sends what is pending first; abort() drops it (as the real abort drops its
    buffer). A write after close is ignored, as asyncio's transports do.
    """

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data) -> None:
        if not data:
            return
        if self._pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(bytes(data))

    def writelines(self, lines) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        pending = sum(map(len, self._pending)) if self._pending else 0
        return self._transport.get_write_buffer_size() + pending

    def __getattr__(self, name):  # get_extra_info, pause_reading, set_protocol, is_closing, ...
        return getattr(self._transport, name)


class HttpToolsProtocol(_UvicornHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))
