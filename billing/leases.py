"""Credit leases: a gateway process admits most calls without a Redis round trip.

Per call, the Redis budget costs two round trips: the reserve before the upstream call and
the settle after it (billing/budget_redis.py). At concurrency 1 each is ~0.13-0.15 ms of
wall time on the benchmark machine, more than the whole rest of the gateway. A lease
removes both from the call's path while keeping every rule of the budget:

- Reserve: a process reserves a slice of a VE's balance in one atomic script (LEASE) and
  then admits calls from it in memory: the event loop runs one call's admission at a
  time, so "check and take" is atomic within the process, and Redis's counters already
  count the whole slice as reserved. credit_spend + reserved <= credit_budget still holds
  in Redis at every instant; no call is admitted that its process's slice cannot pay.
- Settle: one script per call (SETTLE_LEASE) moves the charge from the slice to spend and
  records the unposted charge, exactly like the per-call settle; a call takes at most its
  own share (its hold) from the slice, so one call's overrun never eats another's. It is
  written to the Redis socket before the answer leaves (`FastRedis.evalsha_now`), but not
  waited for. The request-log row and ledger entry are queued when Redis confirms the
  charge, with the amount Redis actually took. The script is safe to apply twice (a
  charge already recorded under its request id is answered as it was), so a reply lost
  with its connection is sent again for a few seconds; if Redis stays unreachable, the
  call's share goes to the ledger and the slice is left reserved for the sweep, so what
  the ledger says was spent stays covered.
- The balance header (x-tokenbill-balance) of a leased call is the last balance Redis
  reported to this process minus this process's charges since: exact for one worker;
  with several worker processes it can miss what other workers charged in the last
  moments (the ledger, /tokenbill, the console and the API are exact).

When a lease is used (all of these): the budget is Redis, BILLING_LEASES is on, the key has
no credit limit of its own (a key limit is checked per call), and the VE's available
balance is at least LEASE_SHARE x LEASE_MIN_CALLS full call estimates. A lease is at most
LEASE_CALLS call estimates and at most 1/LEASE_SHARE of what is available, so a VE with a
small balance is never held up by another process's slice: below the threshold, LEASE
falls back to an ordinary per-call hold in the same script (one round trip, as before).

A lease takes new calls for BILLING_LEASE_SECONDS, then is retired: the settle of its last
call in flight (or, with none in flight, a CLOSE_LEASE script) returns what is left of it.
A process that dies leaves its slice as a hold in the `holds` sweep set: the expired-holds
sweep releases it (after the longest call plus the lease time), as for a per-call hold.
Charges already settled are in Redis's spend and unposted records, so a crash loses no
charge (reconciliation posts unposted charges). A Redis that restarts empty loses the
slice: SETTLE_LEASE then reports the lease gone, the process stops admitting from it, and
the charge is taken from the free balance or capped, never beyond the budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref

from billing.budget import Settled, hold_seconds
from billing.resp import ReplyError, pack_args, script_sha

log = logging.getLogger("tokenbill.billing")

LEASE_CALLS = 64  # a lease is at most this many full call estimates ...
LEASE_SHARE = 16  # ... and at most this share (1/16) of what the VE has available ...
LEASE_MIN_CALLS = 4  # ... and is only taken when that comes to at least 4 call estimates.
RETRY_DELAYS = (0, 0.05, 0.25, 1.0, 2.0, 4.0)  # a settle whose reply was lost is sent again

_LIB = """
local function s(x) return string.format('%d', x) end
local function num(x) return tonumber(x) or 0 end
"""

# KEYS: ve, key, ve holds, holds zset
# ARGV: want, full, minimum, lease id, expiry, ve id, key id, request id, share, min calls
LEASE = _LIB + """
local has_key = ARGV[7] ~= ''
if redis.call('EXISTS', KEYS[1]) == 0 or (has_key and redis.call('EXISTS', KEYS[2]) == 0) then return {-1, 0, 0} end
local v = redis.call('HMGET', KEYS[1], 'budget', 'spend', 'reserved')
local b, sp, r = num(v[1]), num(v[2]), num(v[3])
local avail = b - sp - r
local full = tonumber(ARGV[2])
local grant = math.min(tonumber(ARGV[1]), math.floor(avail / tonumber(ARGV[9])))
if grant >= full * tonumber(ARGV[10]) then
  redis.call('HINCRBY', KEYS[1], 'reserved', s(grant))
  redis.call('HSET', KEYS[3], ARGV[4], ':' .. s(grant))
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6] .. '|' .. ARGV[4])
  return {1, grant, b - sp}
end
local amount = math.min(full, avail)
if amount < tonumber(ARGV[3]) or amount <= 0 then return {0, 0, b - sp} end
redis.call('HINCRBY', KEYS[1], 'reserved', s(amount))
if has_key then redis.call('HINCRBY', KEYS[2], 'reserved', s(amount)) end
redis.call('HSET', KEYS[3], ARGV[8], ARGV[7] .. ':' .. s(amount))
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6] .. '|' .. ARGV[8])
return {0, amount, b - sp}
"""

# KEYS: ve, key, ve holds, holds zset, unposted
# ARGV: lease id, charge, ve id, key id, timestamp, close (1/0), request id, the call's own share
# A call takes at most its own share from the slice (its hold, sized when it was admitted):
# usage above it is paid from the free balance or capped, never from the shares of the
# slice's other calls. Applying it twice (a retry after a lost reply) changes nothing: a
# charge already recorded under its request id is answered as it was.
SETTLE_LEASE = _LIB + """
local has_key = ARGV[4] ~= ''
if redis.call('EXISTS', KEYS[1]) == 0 or (has_key and redis.call('EXISTS', KEYS[2]) == 0) then return {-1, 0, 0} end
local v = redis.call('HMGET', KEYS[1], 'budget', 'spend', 'reserved')
local b, sp, r = num(v[1]), num(v[2]), num(v[3])
local charge = tonumber(ARGV[2])
if charge > 0 then
  local done = redis.call('HGET', KEYS[5], ARGV[7])
  if done then return {num(string.match(done, ':(%d+):')), b - sp, redis.call('HEXISTS', KEYS[3], ARGV[1])} end
end
local held, alive = 0, 0
local h = redis.call('HGET', KEYS[3], ARGV[1])
if h then
  held = num(string.match(h, ':(%d+)$'))
  alive = 1
end
local take = math.min(charge, tonumber(ARGV[8]), held)
if charge > take and charge - take > b - sp - r then charge = take end
local back = 0
if ARGV[6] == '1' then back = held - take end
redis.call('HINCRBY', KEYS[1], 'reserved', s(-(take + back)))
redis.call('HINCRBY', KEYS[1], 'spend', s(charge))
if has_key then redis.call('HINCRBY', KEYS[2], 'spend', s(charge)) end
if alive == 1 then
  if ARGV[6] == '1' then
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[3] .. '|' .. ARGV[1])
  else
    redis.call('HSET', KEYS[3], ARGV[1], ':' .. s(held - take))
  end
end
if charge > 0 then redis.call('HSET', KEYS[5], ARGV[7], ARGV[4] .. ':' .. s(charge) .. ':' .. ARGV[5]) end
return {charge, b - sp - charge, alive}
"""

# KEYS: ve, ve holds, holds zset   ARGV: lease id, ve id
CLOSE_LEASE = _LIB + """
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then return 0 end
local amount = num(string.match(h, ':(%d+)$'))
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2] .. '|' .. ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'reserved', s(-amount)) end
return amount
"""


_SETTLE_SHA = script_sha(SETTLE_LEASE)
_SETTLE_NARGS = 2 + 5 + 8  # the settle command's arguments: sha, numkeys, KEYS, ARGV


class _Lease:
    __slots__ = ("id", "arg", "granted", "left", "inflight", "pending", "open", "closed", "keep", "timer")

    def __init__(self, lease_id: str, amount: int):
        self.id = lease_id
        self.arg = pack_args((lease_id,))  # its id as the settle command's ARGV[1]
        self.granted = amount
        self.left = amount  # what new calls may still take
        self.inflight = 0  # calls admitted from it and not settled yet
        self.pending = 0  # settles sent and not confirmed yet
        self.open = True  # takes new calls
        self.closed = False  # its rest went back to the VE (or Redis lost it)
        self.keep = False  # a settle could not be confirmed: the sweep returns it, not us
        self.timer = None


class _VeState:
    """One VE in one event loop: its current lease and the balance Redis last reported."""

    __slots__ = ("ve_id", "lease", "renewing", "balance", "unconfirmed", "per_call_until", "heads")

    def __init__(self, ve_id: int):
        self.ve_id = ve_id
        self.lease: _Lease | None = None
        self.renewing: asyncio.Task | None = None
        self.balance = 0  # budget - spend, as Redis last said, minus this loop's charges since
        self.unconfirmed = 0  # charges sent to Redis and not answered yet
        self.per_call_until = 0.0  # loop time until which the balance was too small for a lease
        self.heads: dict = {}  # key id -> the constant parts of its settle command (Leases._heads)


class Leases:
    """The lease book of one RedisBudget (see the module docstring)."""

    def __init__(self, budget, seconds: float):
        self.budget = budget
        self.seconds = seconds
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {ve_id: _VeState}
        self._calls: dict[str, tuple[_VeState, _Lease, int]] = {}  # request id -> (state, lease, held)
        self._tasks: set[asyncio.Task] = set()
        self._last: tuple | None = None  # (weakref to a loop, its states): the lookup of the last loop
        self._seq = 0  # settles sent, numbered
        self._pending: set[int] = set()  # numbers of those not answered yet

    def _state(self, ve_id: int) -> _VeState:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            states = last[1]
        else:
            states = self._loops.get(loop)
            if states is None:
                states = self._loops[loop] = {}
            self._last = (weakref.ref(loop), states)
        state = states.get(ve_id)
        if state is None:
            state = states[ve_id] = _VeState(ve_id)
        return state

    # --- reserve -----------------------------------------------------------------------

    def _take(self, state: _VeState, request_id: str, full: int) -> bool:
        lease = state.lease
        if lease is None or lease.left < full:
            return False
        lease.left -= full
        lease.inflight += 1
        self._calls[request_id] = (state, lease, full)
        return True

    async def reserve(self, *, request_id: str, ve_id: int, key_id, full: int, minimum: int) -> int | None:
        """`full` taken from a lease; or a per-call hold LEASE made instead (the balance is
        too small for a lease; 0 = refused); or None: the caller reserves per call."""
        state = self._state(ve_id)
        if self._take(state, request_id, full):
            return full
        if state.lease is not None and full * LEASE_MIN_CALLS > state.lease.granted:
            return None  # a call too big for this slice: held per call, the slice stays
        loop = asyncio.get_running_loop()
        if state.renewing is None:
            if state.per_call_until > loop.time():
                return None
            # A task, not this call's coroutine: a caller cancelled mid-way (client gone)
            # must not drop a lease Redis granted. The others of this loop wait for it.
            state.renewing = loop.create_task(self._renew(state, request_id, key_id, full, minimum))
            state.renewing.add_done_callback(lambda _t, s=state: setattr(s, "renewing", None))
            held = await asyncio.shield(state.renewing)
            if held is not None:
                return held
        else:
            try:
                await asyncio.shield(state.renewing)
            except Exception:
                return None  # the per-call reserve meets (and reports) the same failure
        return full if self._take(state, request_id, full) else None

    async def _renew(self, state: _VeState, request_id: str, key_id, full: int, minimum: int) -> int | None:
        """A new lease (None: the caller takes from it), or a per-call hold for request_id."""
        if state.lease is not None:
            self._retire(state, state.lease)
        budget = self.budget
        ve_id = state.ve_id
        lease_id = "lease:" + uuid.uuid4().hex
        keys = [budget.k_ve(ve_id), budget.k_key(key_id), f"{budget.k_ve(ve_id)}:holds", f"{budget.p}holds"]
        args = [full * LEASE_CALLS, full, minimum, lease_id, time.time() + hold_seconds() + self.seconds, ve_id,
                key_id or "", request_id, LEASE_SHARE, LEASE_MIN_CALLS]
        fast = budget._fast()
        kind, amount, balance = await fast.evalsha(LEASE, keys, args)
        if kind == -1:
            await budget.rebuild(ve_id)
            kind, amount, balance = await fast.evalsha(LEASE, keys, args)
            if kind == -1:  # the key was deleted meanwhile: refused, as a per-call hold would be
                return 0
        state.balance = int(balance) - state.unconfirmed
        if kind == 1:
            lease = state.lease = _Lease(lease_id, int(amount))
            lease.timer = asyncio.get_running_loop().call_later(self.seconds, self._retire, state, lease)
            return None
        state.per_call_until = asyncio.get_running_loop().time() + self.seconds
        return int(amount)

    def _retire(self, state: _VeState, lease: _Lease) -> None:
        """No new calls from this lease; what is left goes back once its calls are settled."""
        if state.lease is lease:
            state.lease = None
        if not lease.open:
            return
        lease.open = False
        if lease.timer is not None:
            lease.timer.cancel()
        self._maybe_close(state, lease)

    def _maybe_close(self, state: _VeState, lease: _Lease) -> None:
        """CLOSE_LEASE once the lease is retired and every settle from it is confirmed (a
        settle retried after a lost reply must still find its slice)."""
        if lease.open or lease.inflight or lease.pending or lease.closed or lease.keep:
            return
        lease.closed = True
        budget = self.budget
        keys = [budget.k_ve(state.ve_id), f"{budget.k_ve(state.ve_id)}:holds", f"{budget.p}holds"]
        self._spawn(self._eval(CLOSE_LEASE, keys, [lease.id, state.ve_id], None), "lease return")

    def observe(self, ve_id: int, balance: int) -> None:
        """A per-call settle's reply: the balance Redis reported, for the leased calls' headers."""
        state = self._state(ve_id)
        state.balance = int(balance) - state.unconfirmed

    # --- settle ------------------------------------------------------------------------

    def settle(self, *, request_id: str, key_id, charge: int, on_confirmed) -> Settled | None:
        """Settle a call admitted from a lease (None: it was not). The script is written to
        Redis now; `on_confirmed(charged)` is called once Redis answers (or fails to).
        The gateway settles a call on the event loop that admitted it."""
        found = self._calls.pop(request_id, None)
        if found is None:
            return None
        state, lease, held = found
        lease.inflight -= 1
        lease.pending += 1
        if lease.open:
            lease.left += held - min(charge, held)
        # The last settle of a retired lease returns the rest in the same script, unless an
        # earlier settle of it still waits for its answer (then _maybe_close does it after).
        close = not lease.open and lease.inflight == 0 and lease.pending == 1 and not lease.keep
        state.unconfirmed += charge
        state.balance -= charge
        self._seq += 1
        seq = self._seq
        self._pending.add(seq)
        # The command as pack() builds it from _keys_args(call), with its constant parts cached.
        heads = state.heads.get(key_id)
        if heads is None:
            heads = self._heads(state, key_id)
        ts = int(time.time())
        c, t, h = str(charge), str(ts), str(held)
        rid = request_id if request_id.isascii() else request_id.encode().decode("latin-1")
        packed = (f"{heads[0]}{lease.arg}${len(c)}\r\n{c}\r\n{heads[1]}${len(t)}\r\n{t}\r\n"
                  f"$1\r\n{1 if close else 0}\r\n${len(rid)}\r\n{rid}\r\n${len(h)}\r\n{h}\r\n").encode("latin-1")
        call = (state, lease, key_id, charge, ts, close, request_id, held, on_confirmed, seq)
        sent = self.budget._fast().evalsha_now(SETTLE_LEASE, None, None, packed)
        if sent is None:  # no open connection: connect and send from a task
            self._spawn(self._confirm(call, None), "lease settle")
        else:  # a callback, not a task per call: this is the hot path
            sent.add_done_callback(lambda f: self._answered(call, f))
        return Settled(charge, state.balance, False, deferred=True)

    def _heads(self, state: _VeState, key_id) -> tuple[str, str]:
        """The settle command of `state`'s VE and `key_id` up to ARGV[1] (the lease id), and
        its ARGV[3:5] (VE and key ids): pack_args() of what _keys_args gives."""
        if len(state.heads) > 4096:
            state.heads.clear()
        keys, _ = self._keys_args((state, None, key_id))
        head = "*%d\r\n" % (1 + _SETTLE_NARGS) + pack_args((b"EVALSHA", _SETTLE_SHA, len(keys), *keys))
        heads = state.heads[key_id] = (head, pack_args((state.ve_id, key_id or "")))
        return heads

    def _keys_args(self, call) -> tuple[list, list]:
        """SETTLE_LEASE's KEYS and ARGV for a settle (`call`, as Leases.settle makes it)."""
        state, lease, key_id = call[0], call[1], call[2]
        budget = self.budget
        ve = budget.k_ve(state.ve_id)
        keys = [ve, budget.k_key(key_id), f"{ve}:holds", f"{budget.p}holds", f"{ve}:unposted"]
        if lease is None:
            return keys, []
        _, _, _, charge, ts, close, request_id, held, _, _ = call
        return keys, [lease.id, charge, state.ve_id, key_id or "", ts, 1 if close else 0, request_id, held]

    def _answered(self, call, sent: asyncio.Future) -> None:
        if not sent.cancelled() and sent.exception() is None:
            charged, balance, alive = sent.result()
            if charged != -1:
                self._done(call, charged, balance, alive)
                return
        self._spawn(self._confirm(call, sent), "lease settle")  # NOSCRIPT, lost counters, errors

    async def _confirm(self, call, sent) -> None:
        state, lease = call[0], call[1]
        keys, args = self._keys_args(call)
        try:
            charged, balance, alive = await self._send_until_answered(keys, args, sent)
            if charged == -1:  # counters gone (an empty Redis): rebuild them from the ledger
                await self.budget.rebuild(state.ve_id)
                charged, balance, alive = await self._send_until_answered(keys, args, None)
            if charged == -1 and args[3] != "":  # the key was deleted meanwhile: the VE pays
                keys, args = [keys[0], self.budget.k_key(None), *keys[2:]], [*args[:3], "", *args[4:]]
                charged, balance, alive = await self._send_until_answered(keys, args, None)
            if charged == -1:
                raise RuntimeError(f"VE {state.ve_id} has no counters and none could be rebuilt")
        except Exception as exc:
            # Redis may or may not have applied it, and cannot say. The slice stays reserved
            # (no CLOSE_LEASE: the expired-holds sweep returns it, long after reconciliation
            # has brought spend to the ledger), so the call's own share is covered and goes
            # to the ledger; usage above that share is left uncollected.
            lease.keep = True
            charged, balance, alive = min(args[1], args[7]), None, 1
            log.error("settle of request %s not confirmed by Redis (%s); %s µcr go to the ledger, the credit "
                      "lease stays reserved until the expired-holds sweep", args[6], type(exc).__name__, charged)
        self._done(call, charged, balance, alive)

    async def _send_until_answered(self, keys, args, sent):
        """SETTLE_LEASE until Redis answers: it is safe to apply twice (see the script), so
        a reply lost with its connection is sent again over a new one for a few seconds."""
        for delay in RETRY_DELAYS:
            if delay:
                await asyncio.sleep(delay)
            try:
                return await self._eval(SETTLE_LEASE, keys, args, sent)
            except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError is an OSError
                sent, failure = None, exc
        raise failure

    def _done(self, call, charged, balance, alive) -> None:
        state, lease, _, charge, _, close, request_id, _, on_confirmed, seq = call
        self._pending.discard(seq)
        lease.pending -= 1
        state.unconfirmed -= charge
        if balance is not None:
            state.balance = int(balance) - state.unconfirmed
        if close or not alive:
            lease.closed = True  # returned by this settle, or gone from Redis
        if not alive and lease.open:  # Redis lost the lease (restarted): stop taking from it
            log.warning("credit lease of VE %s gone from Redis; back to per-call holds", state.ve_id)
            lease.left = 0
            self._retire(state, lease)
        self._maybe_close(state, lease)
        try:
            on_confirmed(int(charged))
        except Exception:
            log.exception("recording request %s failed", request_id)

    async def _eval(self, script: str, keys, args, sent):
        if sent is not None:
            try:
                return await sent
            except ReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
        return await self.budget._fast().evalsha(script, keys, args)

    def _spawn(self, coroutine, what: str) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed (%s)", what, type(t.exception()).__name__)

        task.add_done_callback(done)

    # --- waiting for it all (shutdown, tests, reads) ------------------------------------

    async def settled(self, upto: int | None = None, timeout: float = 15.0) -> None:
        """Wait until the settles this process sent (those numbered up to `upto`, or all of
        them and every lease return) have been answered. FastRedis fails a reply that
        takes longer than its timeout, so this ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if upto is not None:
                if not any(seq <= upto for seq in self._pending):
                    return
                await asyncio.sleep(0.001)
                continue
            pending = [t for t in self._tasks if t.get_loop() is loop and not t.done()]
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            elif self._pending:
                await asyncio.sleep(0.001)
            else:
                return

    @property
    def sent(self) -> int:
        """The number of the last settle sent (for `settled(upto=...)`)."""
        return self._seq

    async def release(self) -> None:
        """Retire every lease of this loop (the rest goes back to the VE) and wait for it."""
        for state in list(self._loops.get(asyncio.get_running_loop(), {}).values()):
            if state.renewing is not None:
                await asyncio.gather(state.renewing, return_exceptions=True)
            if state.lease is not None:
                self._retire(state, state.lease)
        await self.settled()
