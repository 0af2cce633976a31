"""A small pipelined Redis client for the gateway's hot path: EVALSHA and nothing else.

Why not redis.asyncio: its per-command overhead (connection pool checkout, retry wrapper,
argument encoders, observability hooks) measured ~0.25 ms of gateway CPU per script call,
more than the rest of billing together (bench/README.md). Here one connection per event
loop carries every call, pipelined: a command is written at once and its future queued;
replies come back in the order the commands were sent (Redis guarantees it on one
connection), so the reader resolves the futures first-in, first-out.

Correctness notes:
- A caller cancelled while waiting (client gone) only abandons its future: the reply is
  still read and dropped, so the order of the others is kept. The script itself ran or
  will run in Redis either way (the same as with redis-py); holds of calls that never
  settle are released by the expired-holds sweep.
- Any connection failure fails every pending call with ConnectionError (an OSError: the
  biller refuses the call rather than risk overspending) and the next call reconnects.
- A reply that takes longer than `timeout` closes the connection the same way: after a
  lost reply the FIFO pairing could not be trusted any more.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from redis.exceptions import ResponseError


class ReplyError(ResponseError):
    """An error reply from Redis (e.g. a script error); a RedisError like redis-py's."""


def pack(args) -> bytes:
    """A RESP command. Built as one latin-1 string: bytes map 1:1 to its characters, so
    lengths are byte lengths, and one encode at the end (measured: ~2x the per-arg encode)."""
    return ("*%d\r\n" % len(args) + pack_args(args)).encode("latin-1")


def pack_args(args) -> str:
    """The RESP bulk strings of `args`, as pack() writes them (a latin-1 str): a caller that
    sends one command shape many times caches its constant part (billing/leases.py)."""
    parts = []
    for a in args:
        if isinstance(a, str):
            if not a.isascii():
                a = a.encode().decode("latin-1")
        elif isinstance(a, bytes):
            a = a.decode("latin-1")
        else:
            a = str(a)  # ints; floats print as repr (exact round trip)
        parts.append("$%d\r\n%s\r\n" % (len(a), a))
    return "".join(parts)


def script_sha(script: str) -> bytes:
    """The SHA1 EVALSHA names `script` by (hex, as bytes)."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


class _Incomplete(Exception):
    pass


def _parse(buf: bytes, pos: int):
    """One RESP2 reply from buf[pos:]: (value, new pos); _Incomplete if it is not all there."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return buf[pos:pos + n], pos + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            if buf[pos:pos + 1] == b":":  # an integer (the budget scripts' replies): inline
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    raise _Incomplete
                items.append(int(buf[pos + 1:end]))
                pos = end + 2
                continue
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise ConnectionError(f"unexpected reply from Redis: {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: "FastRedis"):
        self.owner = owner
        self.transport = None
        self.loop = asyncio.get_running_loop()
        self.waiting: deque = deque()
        self.sent: deque = deque()  # loop.time() of each pending command, same order
        self.watchdog = None
        self.buf = b""
        self.out: list[bytes] | None = None  # commands of this loop turn, written at its end
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def write_out(self):
        out, self.out = self.out, None
        if out and not self.lost:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes):
        buf = self.buf + data if self.buf else data
        pos = 0
        waiting = self.waiting
        try:
            while pos < len(buf):
                value, pos = _parse(buf, pos)
                fut = waiting.popleft()
                self.sent.popleft()
                if not fut.done():
                    if isinstance(value, ReplyError):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except _Incomplete:
            pass
        except Exception as exc:  # a protocol error: nothing after it can be trusted
            self.fail(ConnectionError(f"Redis protocol error: {exc}"))
            return
        self.buf = buf[pos:]

    def connection_lost(self, exc):
        self.fail(ConnectionError(f"Redis connection lost: {exc}"))

    def fail(self, exc: Exception):
        self.lost = True
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)
        self.sent.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.transport is not None:
            self.transport.close()
        if self.owner._proto is self:
            self.owner._proto = None


class FastRedis:
    """Pipelined EVALSHA over one connection; belongs to the event loop that created it."""

    def __init__(self, url: str, timeout: float = 10.0):
        from tokenbill import redisconf

        # The same reading of REDIS_URL as redis-py's (tokenbill/redisconf.py): TLS with the
        # certificate verified for rediss://, a socket path for unix://, ACL user, db.
        opts = redisconf.parse(url)
        self.path = opts.get("path") if opts["scheme"] == "unix" else None
        self.host = opts.get("host") or "localhost"
        self.port = opts.get("port") or 6379
        self.ssl = redisconf.ssl_context(opts) if opts["scheme"] == "rediss" else None
        self.password = opts.get("password")
        self.username = opts.get("username")
        self.db = opts.get("db") or 0
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future | None = None
        self._shas: dict[str, bytes] = {}

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self.path:
            opening = loop.create_unix_connection(lambda: _Protocol(self), self.path)
        else:
            opening = loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=self.ssl,
                                             server_hostname=self.host if self.ssl else None)
        _, proto = await asyncio.wait_for(opening, self.timeout)
        try:
            if self.password:
                auth = [b"AUTH", self.username, self.password] if self.username else [b"AUTH", self.password]
                await self._send(proto, auth)
            if self.db:
                await self._send(proto, [b"SELECT", self.db])
        except BaseException:
            proto.fail(ConnectionError("Redis handshake failed"))
            raise
        if proto.lost:  # lost right after the handshake's last reply
            raise ConnectionError("Redis connection lost during the handshake")
        self._proto = proto
        return proto

    def _send(self, proto: _Protocol, args) -> asyncio.Future:
        loop = proto.loop
        fut = loop.create_future()
        if proto.lost:
            # Lost between the caller's _connection() and now: fail() has already run, so
            # nothing would ever answer a future queued here.
            fut.set_exception(ConnectionError("Redis connection lost"))
            return fut
        proto.waiting.append(fut)
        proto.sent.append(loop.time())
        # Commands issued in one turn of the loop leave in one write (one syscall) at its
        # end; under load that is most of them (measured: ~25% less CPU per call at c=16).
        if proto.out:
            proto.out.append(pack(args))
        else:
            proto.out = [pack(args)]
            loop.call_soon(proto.write_out)
        if proto.watchdog is None:
            proto.watchdog = loop.call_later(1.0, _watch, proto, self.timeout)
        return fut

    def _send_now(self, proto: _Protocol, packed: bytes) -> asyncio.Future:
        """`packed` written to the socket now, after the commands of this loop turn not
        written yet (replies come in the order the commands were sent)."""
        loop = proto.loop
        fut = loop.create_future()
        if proto.lost:
            fut.set_exception(ConnectionError("Redis connection lost"))
            return fut
        proto.waiting.append(fut)
        proto.sent.append(loop.time())
        if proto.out:
            proto.out.append(packed)
            proto.write_out()  # the write_out already scheduled finds nothing left
        else:
            proto.transport.write(packed)
        if proto.watchdog is None:
            proto.watchdog = loop.call_later(1.0, _watch, proto, self.timeout)
        return fut

    async def execute(self, *args):
        proto = await self._connection()
        return await self._send(proto, args)

    def _sha(self, script: str) -> bytes:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = script_sha(script)
        return sha

    async def evalsha(self, script: str, keys, args):
        try:
            return await self.execute(b"EVALSHA", self._sha(script), len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.execute(b"EVAL", script, len(keys), *keys, *args)  # loads it too

    def evalsha_now(self, script: str, keys, args, packed: bytes | None = None) -> asyncio.Future | None:
        """EVALSHA written to the socket before this returns (not at the end of the loop
        turn), its reply a future; None when there is no open connection (then await
        `evalsha`). For a step whose effect must leave the process before the caller goes
        on, without waiting for the answer. A NOSCRIPT reply means it did not run.
        `packed`: the command already built by the caller (pack() of EVALSHA, the script's
        sha, len(keys), keys and args), for a hot path that caches its constant part."""
        proto = self._proto
        if proto is None or proto.lost:
            return None
        if packed is None:
            packed = pack((b"EVALSHA", self._sha(script), len(keys), *keys, *args))
        return self._send_now(proto, packed)

    def close(self) -> None:
        if self._proto is not None:
            self._proto.fail(ConnectionError("client closed"))


def _watch(proto: _Protocol, timeout: float) -> None:
    """Once a second while calls are pending: the oldest one waiting longer than `timeout`
    fails the connection (one timer per connection, not one per call)."""
    proto.watchdog = None
    if proto.lost:
        if proto.waiting:  # a future queued after fail() ran: fail it too, never leave it waiting
            proto.fail(ConnectionError("Redis connection lost"))
        return
    if not proto.sent:
        return
    if proto.loop.time() - proto.sent[0] > timeout:
        proto.fail(ConnectionError("Redis did not answer in time"))
        return
    proto.watchdog = proto.loop.call_later(1.0, _watch, proto, timeout)
