"""Requests-per-minute and tokens-per-minute limits, per VE and per key.

A VE's limits (requests_per_minute, tokens_per_minute) apply to the VE as a whole and,
counted separately, to each of its keys (keys have no limits of their own in the model):
a call must fit in both windows.

Fixed one-minute windows. The check and the count are one step: a Lua script in Redis
(shared by every process), a lock-free dict update in-process otherwise (one event loop,
no await between read and write). Tokens are counted when admitted (the prompt estimate)
and topped up with the output actually generated when the call settles; a request bigger
than a whole window's tokens is let through when the window is empty, else it could
never run.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from django.conf import settings

from billing.gate import RateLimited

WINDOW = 60

# KEYS: one counter hash per scope. ARGV: rpm, tpm, tokens, ttl ; -1 = no limit.
CHECK = """
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'r', 't')
  local r, t = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if rpm >= 0 and r + 1 > rpm then return i end
  if tpm >= 0 and t > 0 and t + tokens > tpm then return i end
end
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'r', 1)
  redis.call('HINCRBY', KEYS[i], 't', ARGV[3])
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 0
"""

ADD = """
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 't', ARGV[1])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 0
"""


def _window(now: float) -> tuple[int, float]:
    start = int(now // WINDOW) * WINDOW
    return start, start + WINDOW - now


def _scopes(ve, key) -> list[tuple[str, int]]:
    return [("virtual endpoint", ve.id)] + ([("key", key.id)] if key is not None else [])


class MemoryLimiter:
    def __init__(self):
        self._counts: dict[tuple, list[int]] = {}

    async def check(self, ve, key, tokens: int) -> None:
        if ve.requests_per_minute is None and ve.tokens_per_minute is None:
            return
        start, retry_after = _window(time.time())
        cells = [(scope, self._counts.setdefault((scope, sid, start), [0, 0])) for scope, sid in _scopes(ve, key)]
        for scope, (requests, used) in cells:
            if ve.requests_per_minute is not None and requests + 1 > ve.requests_per_minute:
                raise RateLimited(retry_after, scope)
            if ve.tokens_per_minute is not None and used > 0 and used + tokens > ve.tokens_per_minute:
                raise RateLimited(retry_after, scope)
        for _, cell in cells:
            cell[0] += 1
            cell[1] += tokens
        self._drop_old(start)

    async def add_tokens(self, ve, key, tokens: int) -> None:
        if ve.tokens_per_minute is None or tokens <= 0:
            return
        start, _ = _window(time.time())
        for scope, sid in _scopes(ve, key):
            self._counts.setdefault((scope, sid, start), [0, 0])[1] += tokens

    def _drop_old(self, start: int) -> None:
        if len(self._counts) > 10_000:
            for k in [k for k in self._counts if k[2] < start]:
                del self._counts[k]


class RedisLimiter:
    def __init__(self, url: str, prefix: str):
        self.url = url
        self.p = prefix + "rl:"
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _client(self):
        # billing/resp.py: pipelined EVALSHA on one connection per loop (the hot path's client)
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from billing.resp import FastRedis

            client = self._clients[loop] = FastRedis(self.url)
        return client

    def _names(self, ve, key, start) -> list[str]:
        return [f"{self.p}{'ve' if scope.startswith('virtual') else 'key'}:{sid}:{start}" for scope, sid in
                _scopes(ve, key)]

    async def check(self, ve, key, tokens: int) -> None:
        if ve.requests_per_minute is None and ve.tokens_per_minute is None:
            return
        start, retry_after = _window(time.time())
        rpm = -1 if ve.requests_per_minute is None else ve.requests_per_minute
        tpm = -1 if ve.tokens_per_minute is None else ve.tokens_per_minute
        failed = await self._client().evalsha(CHECK, self._names(ve, key, start), [rpm, tpm, tokens, WINDOW + 5])
        if failed:
            raise RateLimited(retry_after, _scopes(ve, key)[int(failed) - 1][0])

    async def add_tokens(self, ve, key, tokens: int) -> None:
        if ve.tokens_per_minute is None or tokens <= 0:
            return
        start, _ = _window(time.time())
        await self._client().evalsha(ADD, self._names(ve, key, start), [tokens, WINDOW + 5])


def make_limiter():
    if settings.REDIS_URL:
        return RedisLimiter(settings.REDIS_URL, settings.REDIS_PREFIX)
    return MemoryLimiter()
