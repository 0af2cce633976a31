"""Circuit breaker per physical model.

A physical model that fails N times in a row (settings.GATEWAY_BREAKER_THRESHOLD), or
answers 429 with Retry-After, is "open" (skipped) until its cooldown ends. A later
failure may push the end further out, never pull it closer: two processes (or two
calls) reporting at once must not shorten each other's cooldown, so every write is a
max().

State lives in this process (`_open_until`, read on every call without I/O). With
Redis configured, openings are also written to one Redis hash with a max-only Lua
script, and a background task (routing.cache) pulls that hash every ~0.5 s into the
local copy, so every process skips the model within a second. Consecutive-failure
counts stay per process: they decide when to open, the opening itself is shared.

Times are wall-clock epoch seconds because they cross processes.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

log = logging.getLogger(__name__)

# Returns the stored value after the max(): KEYS[1]=hash, ARGV[1]=field, ARGV[2]=until.
_MAX_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if new > cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return ARGV[2]
end
return tostring(cur)
"""


def redis_key() -> str:
    return settings.REDIS_PREFIX + "breaker"


class Breaker:
    def __init__(self):
        self._open_until: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._redis = None  # redis.asyncio client, set by routing.cache when REDIS_URL is set
        self._script = None

    # --- reads (hot path: a dict lookup) -------------------------------------------
    def is_open(self, physical_model_id: int, now: float | None = None) -> bool:
        until = self._open_until.get(physical_model_id)
        if until is None:
            return False
        return until > (now if now is not None else time.time())

    def open_until(self, physical_model_id: int) -> float:
        return self._open_until.get(physical_model_id, 0.0)

    # --- writes ----------------------------------------------------------------------
    async def success(self, physical_model_id: int) -> None:
        if self._failures:
            self._failures.pop(physical_model_id, None)

    async def failure(self, physical_model_id: int, *, retry_after: float | None = None) -> None:
        """Count one failure; open (or extend) when the threshold is reached or the
        upstream told us how long to wait."""
        count = self._failures.get(physical_model_id, 0) + 1
        self._failures[physical_model_id] = count
        cooldown = None
        if retry_after is not None and retry_after > 0:
            cooldown = retry_after
        if count >= settings.GATEWAY_BREAKER_THRESHOLD:
            cooldown = max(cooldown or 0.0, settings.GATEWAY_BREAKER_COOLDOWN)
        if cooldown is not None:
            await self.open(physical_model_id, time.time() + cooldown)

    async def open(self, physical_model_id: int, until: float) -> None:
        self.merge(physical_model_id, until)
        if self._redis is not None:
            try:
                if self._script is None:
                    self._script = self._redis.register_script(_MAX_LUA)
                await self._script(keys=[redis_key()], args=[str(physical_model_id), repr(until)])
            except Exception as exc:  # Redis down: the local copy still protects this process
                log.warning("breaker: could not share state through Redis (%s)", type(exc).__name__)

    def merge(self, physical_model_id: int, until: float) -> None:
        if until > self._open_until.get(physical_model_id, 0.0):
            self._open_until[physical_model_id] = until

    async def pull(self) -> None:
        """Copy the shared state into this process (called by the background sync task)."""
        if self._redis is None:
            return
        state = await self._redis.hgetall(redis_key())
        now = time.time()
        for field, value in state.items():
            until = float(value)
            if until > now:
                self.merge(int(field), until)

    def reset(self) -> None:
        """Tests only: forget everything this process knows."""
        self._open_until.clear()
        self._failures.clear()


breaker = Breaker()
