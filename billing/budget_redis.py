"""The production budget: Redis counters moved by one Lua script per step.

Redis runs a script alone, so each script's check and write are one atomic step on
every process and machine. Keys (all under settings.REDIS_PREFIX + "b:"):

    ve:{id}            hash budget, spend, reserved      (micro-credits)
    key:{id}           hash spend, reserved
    ve:{id}:holds      hash request_id -> "key_id:amount"    live holds
    holds              zset "ve_id|request_id" by expiry     for the sweep of dead calls
    ve:{id}:grants     hash ledger entry id -> amount        every non-charge entry applied
    ve:{id}:unposted   hash request_id -> "key_id:amount:ts" charges settled here, kept
                       RETAIN seconds (posted or not) so reconciliation can tell a charge
                       that is in Redis but not yet in the ledger from drift
    ves                set of VE ids that have counters

The counters are a cache of the ledger. When a VE's hash is missing (a restarted Redis,
an evicted key) the next call rebuilds it from ledger sums (`rebuild`), and the periodic
reconciliation repairs any drift with the same script. Budget: the union of the grant
entries in SQL and the ones applied here (by entry id, so none counts twice, whatever the
order of commit, listener and rebuild). Spend: ledger charges + unposted charges that the
ledger did not yet have when it was read; a charge that is in both appears in the "recent"
list of request ids passed along, read in the same SQL snapshot.

Scripts touch key hashes of the VE's keys by name; this assumes one Redis (no Cluster).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
import time
import weakref

import redis
import redis.asyncio as aredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, Sum

from billing.resp import FastRedis
from billing.budget import ChargeEntry, Counters, Drift, Settled, hold_seconds
from billing.models import LedgerEntry, LedgerKind
from routing.models import AccessKey

log = logging.getLogger("tokenbill.billing")

RETAIN = 30.0  # seconds an unposted-charge record outlives its settle (the sweep then checks the ledger)
CLOCK_SKEW = 30.0  # between gateway hosts (settle time) and the host that wrote the ledger row

_LIB = """
local function s(x) return string.format('%d', x) end
local function num(x) return tonumber(x) or 0 end
"""

RESERVE = _LIB + """
local has_key = ARGV[7] ~= ''
if redis.call('EXISTS', KEYS[1]) == 0 or (has_key and redis.call('EXISTS', KEYS[2]) == 0) then return -1 end
local v = redis.call('HMGET', KEYS[1], 'budget', 'spend', 'reserved')
local avail = num(v[1]) - num(v[2]) - num(v[3])
local limit = tonumber(ARGV[3])
if has_key and limit >= 0 then
  local k = redis.call('HMGET', KEYS[2], 'spend', 'reserved')
  avail = math.min(avail, limit - num(k[1]) - num(k[2]))
end
local amount = math.min(tonumber(ARGV[1]), avail)
if amount < tonumber(ARGV[2]) or amount <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', s(amount))
if has_key then redis.call('HINCRBY', KEYS[2], 'reserved', s(amount)) end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[7] .. ':' .. s(amount))
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6] .. '|' .. ARGV[4])
return amount
"""

SETTLE = _LIB + """
local has_key = ARGV[5] ~= ''
if redis.call('EXISTS', KEYS[1]) == 0 or (has_key and redis.call('EXISTS', KEYS[2]) == 0) then return {-1, 0} end
local held = 0
local h = redis.call('HGET', KEYS[3], ARGV[1])
if h then
  held = num(string.match(h, ':(%d+)$'))
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[4] .. '|' .. ARGV[1])
end
local v = redis.call('HMGET', KEYS[1], 'budget', 'spend', 'reserved')
local b, sp, r = num(v[1]), num(v[2]), num(v[3])
local charge = tonumber(ARGV[2])
if charge > held then
  local free = b - sp - (r - held)
  local limit = tonumber(ARGV[3])
  if has_key and limit >= 0 then
    local k = redis.call('HMGET', KEYS[2], 'spend', 'reserved')
    free = math.min(free, limit - num(k[1]) - (num(k[2]) - held))
  end
  if charge > free then charge = held end
end
redis.call('HINCRBY', KEYS[1], 'reserved', s(-held))
redis.call('HINCRBY', KEYS[1], 'spend', s(charge))
if has_key then
  redis.call('HINCRBY', KEYS[2], 'reserved', s(-held))
  redis.call('HINCRBY', KEYS[2], 'spend', s(charge))
end
if charge > 0 then redis.call('HSET', KEYS[5], ARGV[1], ARGV[5] .. ':' .. s(charge) .. ':' .. ARGV[6]) end
return {charge, b - sp - charge}
"""

GRANT = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'budget', ARGV[2])
end
return 1
"""

RELEASE = _LIB + """
local released = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)) do
  local ve, rid = string.match(member, '^(%d+)|(.+)$')
  local holds = ARGV[2] .. 've:' .. ve .. ':holds'
  local h = redis.call('HGET', holds, rid)
  if h then
    local kid, amount = string.match(h, '^(%d*):(%d+)$')
    redis.call('HDEL', holds, rid)
    -- never on a missing hash: that would create one with a negative reservation and no
    -- budget, which the next call would take for counters (the rebuild recounts holds)
    local vk, kk = ARGV[2] .. 've:' .. ve, ARGV[2] .. 'key:' .. kid
    if redis.call('EXISTS', vk) == 1 then redis.call('HINCRBY', vk, 'reserved', s(-num(amount))) end
    if kid ~= '' and redis.call('EXISTS', kk) == 1 then redis.call('HINCRBY', kk, 'reserved', s(-num(amount))) end
    released = released + 1
  end
  redis.call('ZREM', KEYS[1], member)
end
return released
"""

# KEYS: ve, grants, holds, unposted, ves, key hashes...   ARGV: mode, ve_id, n_grants,
# (id, amount)*, ledger_spend, n_recent, rid*, n_keys, (key_id, key_ledger_spend)*
REBUILD = _LIB + """
if ARGV[1] == 'init' and redis.call('EXISTS', KEYS[1]) == 1 then
  local missing = false
  for j = 6, #KEYS do if redis.call('EXISTS', KEYS[j]) == 0 then missing = true end end
  if not missing then return {} end
end
local i = 4
for j = 1, tonumber(ARGV[3]) do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
local budget = 0
for _, a in ipairs(redis.call('HVALS', KEYS[2])) do budget = budget + num(a) end
local spend = tonumber(ARGV[i]); i = i + 1
local recent = {}
for j = 1, tonumber(ARGV[i]) do recent[ARGV[i + j]] = true end
i = i + tonumber(ARGV[i]) + 1
local nk = tonumber(ARGV[i]); i = i + 1
local kidx, kspend, kres = {}, {}, {}
for j = 1, nk do kidx[ARGV[i]] = j; kspend[j] = tonumber(ARGV[i + 1]); kres[j] = 0; i = i + 2 end
local u = redis.call('HGETALL', KEYS[4])
for j = 1, #u, 2 do
  if not recent[u[j]] then
    local kid, amount = string.match(u[j + 1], '^(%d*):(%d+):')
    spend = spend + num(amount)
    if kidx[kid] then kspend[kidx[kid]] = kspend[kidx[kid]] + num(amount) end
  end
end
local reserved = 0
local h = redis.call('HGETALL', KEYS[3])
for j = 1, #h, 2 do
  local kid, amount = string.match(h[j + 1], '^(%d*):(%d+)$')
  reserved = reserved + num(amount)
  if kidx[kid] then kres[kidx[kid]] = kres[kidx[kid]] + num(amount) end
end
local found = redis.call('HMGET', KEYS[1], 'budget', 'spend', 'reserved')
local out = {found[1] or '', found[2] or '', found[3] or '', s(budget), s(spend), s(reserved)}
redis.call('HSET', KEYS[1], 'budget', s(budget), 'spend', s(spend), 'reserved', s(reserved))
redis.call('SADD', KEYS[5], ARGV[2])
for j = 1, nk do
  local kf = redis.call('HMGET', KEYS[5 + j], 'spend', 'reserved')
  table.insert(out, kf[1] or ''); table.insert(out, kf[2] or '')
  table.insert(out, s(kspend[j])); table.insert(out, s(kres[j]))
  redis.call('HSET', KEYS[5 + j], 'spend', s(kspend[j]), 'reserved', s(kres[j]))
end
return out
"""


def _ignore(charged: int) -> None:
    pass


class RedisBudget:
    name = "redis"

    def __init__(self, url: str, prefix: str, leases: bool | None = None):
        from billing.leases import Leases

        self.url = url
        self.p = prefix + "b:"
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._fast_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._last_fast: tuple | None = None  # (weakref to a loop, its client)
        self._sync = redis.Redis.from_url(url)
        self.before_rebuild = None  # async callable: flush this process's queued ledger entries
        if leases is None:
            leases = settings.BILLING_LEASES
        self.leases = Leases(self, settings.BILLING_LEASE_SECONDS) if leases else None

    # --- keys and clients ------------------------------------------------------------

    def k_ve(self, ve_id) -> str:
        return f"{self.p}ve:{ve_id}"

    def k_key(self, key_id) -> str:
        return f"{self.p}key:{key_id or 0}"

    def _scripts(self):
        # redis.asyncio connections belong to one event loop: one client per loop.
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = aredis.Redis(connection_pool=aredis.BlockingConnectionPool.from_url(
                self.url, max_connections=64, timeout=20))
            entry = self._clients[loop] = (client, {name: client.register_script(text) for name, text in
                                                    (("reserve", RESERVE), ("settle", SETTLE))})
        return entry

    def _fast(self) -> FastRedis:
        # The hot path's two scripts go over billing/resp.py (one pipelined connection per loop).
        loop = asyncio.get_running_loop()
        last = self._last_fast
        if last is not None and last[0]() is loop:  # the loop of the last call: no weak-key lookup
            return last[1]
        client = self._fast_clients.get(loop)
        if client is None:
            client = self._fast_clients[loop] = FastRedis(self.url)
        self._last_fast = (weakref.ref(loop), client)
        return client

    # --- reserve / settle --------------------------------------------------------------

    async def reserve(self, *, request_id, ve_id, key_id, full, minimum, key_limit=None) -> int:
        if key_limit is None and self.leases is not None and full > 0:
            held = await self.leases.reserve(request_id=request_id, ve_id=ve_id, key_id=key_id, full=full,
                                             minimum=minimum)
            if held is not None:
                return held
        fast = self._fast()
        keys = [self.k_ve(ve_id), self.k_key(key_id), f"{self.k_ve(ve_id)}:holds", f"{self.p}holds"]
        args = [full, minimum, -1 if key_limit is None else key_limit, request_id,
                time.time() + hold_seconds(), ve_id, key_id or ""]
        result = await fast.evalsha(RESERVE, keys, args)
        if result == -1:
            await self.rebuild(ve_id)
            result = await fast.evalsha(RESERVE, keys, args)
        return max(int(result), 0)

    async def settle(self, *, request_id, ve_id, key_id, charge, entry: ChargeEntry, key_limit=None,
                     on_confirmed=None) -> Settled:
        if self.leases is not None:
            settled = self.leases.settle(request_id=request_id, key_id=key_id, charge=charge,
                                         on_confirmed=on_confirmed or _ignore)
            if settled is not None:
                return settled
        fast = self._fast()
        keys = [self.k_ve(ve_id), self.k_key(key_id), f"{self.k_ve(ve_id)}:holds", f"{self.p}holds",
                f"{self.k_ve(ve_id)}:unposted"]
        args = [request_id, charge, -1 if key_limit is None else key_limit, ve_id, key_id or "", int(time.time())]
        charged, balance = await fast.evalsha(SETTLE, keys, args)
        if charged == -1:
            await self.rebuild(ve_id)
            charged, balance = await fast.evalsha(SETTLE, keys, args)
        if charged == -1 and key_id is not None:
            # The key was deleted while its call ran (its counters cannot be rebuilt): the
            # VE still pays for what its key used.
            return await self.settle(request_id=request_id, ve_id=ve_id, key_id=None, charge=charge, entry=entry)
        if charged == -1:
            raise RuntimeError(f"VE {ve_id} has no counters and none could be rebuilt")
        if self.leases is not None:
            self.leases.observe(ve_id, balance)
        return Settled(int(charged), int(balance), False)

    async def release_leases(self) -> None:
        """Return this process's credit leases and wait for its settles (shutdown, tests)."""
        if self.leases is not None:
            await self.leases.release()

    async def counters(self, ve_id) -> Counters:
        if self.leases is not None:
            await self.leases.settled(upto=self.leases.sent)  # this process's settles so far first
        client, _ = self._scripts()
        values = await client.hmget(self.k_ve(ve_id), "budget", "spend", "reserved")
        if values[0] is None:
            await self.rebuild(ve_id)
            values = await client.hmget(self.k_ve(ve_id), "budget", "spend", "reserved")
        return Counters(*(int(v or 0) for v in values))

    async def key_counters(self, key_id) -> tuple[int, int]:
        client, _ = self._scripts()
        spend, reserved = await client.hmget(self.k_key(key_id), "spend", "reserved")
        return int(spend or 0), int(reserved or 0)

    async def rebuild(self, ve_id: int) -> None:
        if self.before_rebuild is not None:
            await self.before_rebuild()
        await sync_to_async(self.rebuild_sync)(ve_id, "init")

    # --- from the ledger (sync: Celery, and rebuild in a worker thread) ------------------

    def grant_applied(self, entry: LedgerEntry) -> None:
        """on_posted listener: a grant / top-up / refund reaches the Redis budget once."""
        if entry.kind == LedgerKind.CHARGE:
            return  # charges moved the counters in settle already
        self._sync.eval(GRANT, 2, self.k_ve(entry.virtual_endpoint_id),
                        f"{self.k_ve(entry.virtual_endpoint_id)}:grants", entry.pk, entry.amount)

    def rebuild_sync(self, ve_id: int, mode: str = "repair") -> list[Drift]:
        ve = self.k_ve(ve_id)
        # The oldest unposted record bounds which ledger rows can also be in it: read it
        # first; records added later are newer still.
        stamps = [int(v.rsplit(b":", 1)[1]) for v in self._sync.hvals(f"{ve}:unposted")]
        oldest = min(stamps) if stamps else time.time()
        grants, spend, recent, keys = self._ledger_state(ve_id, oldest - CLOCK_SKEW)
        key_names = [self.k_key(k) for k in keys]
        args = [mode, ve_id, len(grants), *[x for g in grants for x in g], spend, len(recent), *recent, len(keys),
                *[x for k in keys.items() for x in k]]
        out = self._sync.eval(REBUILD, 5 + len(key_names), ve, f"{ve}:grants", f"{ve}:holds", f"{ve}:unposted",
                              f"{self.p}ves", *key_names, *args)
        return self._drifts(ve_id, [o.decode() if isinstance(o, bytes) else str(o) for o in out])

    def _ledger_state(self, ve_id: int, since: float):
        """Grants, charge sum, charge ids since `since` and per-key charge sums: one snapshot."""
        cutoff = datetime.fromtimestamp(since, tz=UTC)
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            entries = LedgerEntry.objects.filter(virtual_endpoint_id=ve_id)
            grants = list(entries.filter(~Q(kind=LedgerKind.CHARGE)).values_list("id", "amount"))
            charges = entries.filter(kind=LedgerKind.CHARGE)
            spend = charges.aggregate(s=Sum("amount"))["s"] or 0
            recent = list(charges.filter(created_at__gte=cutoff).values_list("idempotency_key", flat=True))
            keys = dict.fromkeys(AccessKey.objects.filter(virtual_endpoint_id=ve_id).values_list("id", flat=True), 0)
            for key_id, total in charges.filter(access_key__isnull=False).values_list("access_key_id").annotate(
                    s=Sum("amount")).values_list("access_key_id", "s"):
                keys[key_id] = total or 0
        return grants, spend, recent, keys

    def _drifts(self, ve_id: int, out: list[str]) -> list[Drift]:
        if not out or out[0] == "":
            return []  # created, or already there (init)
        drifts = [Drift(ve_id, c, int(out[i]), int(out[i + 3])) for i, c in enumerate(("budget", "spend", "reserved"))]
        return [d for d in drifts if d.found != d.expected]

    def reconcile(self, ve_id: int) -> list[Drift]:
        from billing.models_usage import DriftReport

        drifts = self.rebuild_sync(ve_id, "repair")
        for d in drifts:
            log.warning("redis drift on VE %s: %s was %s, ledger says %s (repaired)", ve_id, d.counter, d.found,
                        d.expected)
        DriftReport.objects.bulk_create([DriftReport(virtual_endpoint_id=ve_id, store="redis", counter=d.counter,
                                                     found=d.found, expected=d.expected) for d in drifts])
        return drifts

    def known_ves(self) -> list[int]:
        return sorted(int(v) for v in self._sync.smembers(f"{self.p}ves"))

    def release_expired(self) -> int:
        return int(self._sync.eval(RELEASE, 1, f"{self.p}holds", time.time(), self.p))

    def unposted(self, ve_id: int) -> dict[str, tuple[int | None, int, int]]:
        raw = self._sync.hgetall(f"{self.k_ve(ve_id)}:unposted")
        result = {}
        for rid, value in raw.items():
            key_id, amount, ts = value.decode().split(":")
            result[rid.decode()] = (int(key_id) if key_id else None, int(amount), int(ts))
        return result

    def forget_unposted(self, ve_id: int, request_ids: list[str]) -> None:
        if request_ids:
            self._sync.hdel(f"{self.k_ve(ve_id)}:unposted", *request_ids)

    def delete_all_keys(self) -> int:
        """Tests only: what a restarted, empty Redis looks like (only our prefix)."""
        names = list(self._sync.scan_iter(match=f"{self.p}*", count=1000))
        return self._sync.delete(*names) if names else 0
