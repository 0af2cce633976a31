"""billing/resp.py, the hot path's pipelined EVALSHA client, against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from billing.resp import FastRedis, ReplyError, pack

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (the PostgreSQL + Redis pass)")

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}"
INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def test_pack_counts_bytes_not_characters():
    assert pack(["é", 12, b"x"]) == b"*3\r\n$2\r\n\xc3\xa9\r\n$2\r\n12\r\n$1\r\nx\r\n"


async def test_concurrent_calls_get_their_own_replies_in_order():
    # given one pipelined connection
    client = FastRedis(settings.REDIS_URL)
    key = f"{settings.REDIS_PREFIX}resp:echo"
    # when 300 calls are in flight at once (non-ASCII arguments included)
    replies = await asyncio.gather(*(client.evalsha(ECHO, [key], [f"ü{i}", i]) for i in range(300)))
    # then
    assert replies == [[key.encode(), f"ü{i}".encode(), 2 * i] for i in range(300)]
    client.close()


async def test_unknown_script_is_loaded_and_errors_are_raised():
    client = FastRedis(settings.REDIS_URL)
    key = f"{settings.REDIS_PREFIX}resp:n"
    script = INCR + f" -- {id(client)}"  # a script this Redis has not seen: NOSCRIPT, then EVAL
    try:
        assert await client.evalsha(script, [key], [5]) >= 5
        with pytest.raises(ReplyError):
            await client.evalsha("return redis.call('NOPE')", [key], [])
        # the connection still pairs replies correctly after an error reply
        assert (await client.evalsha(ECHO, [key], ["a", 1]))[2] == 2
    finally:
        await client.execute("DEL", key)
        client.close()


async def test_cancelled_caller_does_not_shift_the_replies_of_others():
    client = FastRedis(settings.REDIS_URL)
    key = f"{settings.REDIS_PREFIX}resp:c"
    first = asyncio.ensure_future(client.evalsha(ECHO, [key], ["first", 1]))
    second = asyncio.ensure_future(client.evalsha(ECHO, [key], ["second", 2]))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second)[1] == b"second"
    client.close()


async def test_lost_connection_fails_pending_calls_then_reconnects():
    client = FastRedis(settings.REDIS_URL)
    key = f"{settings.REDIS_PREFIX}resp:l"
    await client.evalsha(ECHO, [key], ["x", 1])
    # when the connection drops under a pending call
    pending = asyncio.ensure_future(client.execute("BLPOP", f"{key}:never", 5))
    await asyncio.sleep(0.05)
    client._proto.transport.abort()
    # then it fails as an OSError (the biller refuses rather than overspend) ...
    with pytest.raises(ConnectionError):
        await pending
    # ... and the next call gets a fresh connection
    assert (await client.evalsha(ECHO, [key], ["y", 3]))[2] == 6
    client.close()


def test_replies_parse_the_same_whole_or_cut_at_any_byte():
    from billing.resp import _Incomplete, _parse

    # given replies of every kind the budget's scripts give, integer arrays included
    replies = [
        (b"*3\r\n:12\r\n:-1\r\n:0\r\n", [12, -1, 0]),
        (b"*3\r\n$3\r\nabc\r\n:5\r\n*2\r\n:1\r\n$-1\r\n", [b"abc", 5, [1, None]]),
        (b":42\r\n", 42), (b"+OK\r\n", b"OK"), (b"$-1\r\n", None), (b"*0\r\n", []), (b"*-1\r\n", None),
    ]
    for raw, value in replies:
        # then the whole reply parses to its value and ends where it ends
        assert _parse(raw + b":7\r\n", 0) == (value, len(raw))
        # and any prefix of it is incomplete (never a wrong value)
        for cut in range(len(raw)):
            with pytest.raises(_Incomplete):
                _parse(raw[:cut], 0)
