"""Redis mode: request log rows leave the gateway process through a Redis list.

With Redis configured the gateway writes no SQL at all, not even off the hot path. Each
settled call's log row (and, when its charge is not yet in the ledger, the pending ledger
entry) is encoded as one JSON record; a task per event loop pushes the buffered records
to the list `<prefix>logq` every INTERVAL seconds (or at MAX_BATCH records) with one
RPUSH over the budget's pipelined connection (billing/resp.py). The Celery beat task
`billing.flush_request_logs` drains the list into SQL every second: ledger entries and log
rows of a batch in one transaction, then LTRIM.

Why: the in-process writer thread (billing/requestlog.py LogWriter, still the embedded
default's writer) cost the gateway ~0.3 ms of CPU per row and held the GIL against the
event loop (bench/README.md); an RPUSH of a JSON record costs a few microseconds.

Safety: one drainer at a time (a lock key with expiry). A drainer that dies after its
commit and before LTRIM leaves the batch to the next one, which writes it again as a
no-op (log rows are unique by request id, ledger entries by idempotency key). A database
error leaves the records in Redis for the next run. A gateway that crashes loses at most
INTERVAL seconds of log rows; their charges are in Redis's unposted records, from which
the reconciliation posts the ledger entries (billing/budget_redis.py, billing/reconcile.py).

A Redis that restarts empty must not take undrained charges with it: every push returns
the list's running totals (records pushed, records drained) and an epoch (a random value
set once per Redis lifetime). A gateway keeps what it pushed until the drained total
passes it (normally a second or two; at most MAX_RETAINED records); when the epoch
changes, Redis lost its data, and the gateway pushes what it kept again. The drain trims
only within the epoch it read, so it never drops records pushed after a restart.

A gateway that keeps undrained records asks for the epoch every tick even with nothing new
to push (`push` with no records), so it re-pushes within a tick of a loss, not at its next
call. The epoch carries the Redis time it was created at: for LOSS_GRACE seconds after
that, a counter rebuild (billing/budget_redis.py) waits, then drains everything pushed so
far, before it reads the ledger (`ready_for_rebuild`); see README "Redis loss".

Two drainers (a rebuild's and Celery's; a FLUSHALL drops the lock) are safe: the drain
reads the list, the epoch and the drained total in one step and trims only if the drained
total is still the one it read (compare-and-set), so it never trims records it did not
write; the rows it wrote twice are deduplicated by the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from datetime import datetime
from decimal import Decimal

import redis.exceptions
from django.conf import settings

log = logging.getLogger("tokenbill.billing")

INTERVAL = 0.1  # seconds between pushes from a gateway loop
MAX_BATCH = 500  # records per RPUSH, and per drained SQL transaction
MAX_BUFFER = 100_000  # records kept in memory while Redis is unreachable (oldest dropped beyond)
MAX_RETAINED = 20_000  # pushed records kept until drained, against a Redis restart (~25 MB)
LOCK_SECONDS = 60  # a drainer that died releases the list after this
LOSS_GRACE = 3.0  # seconds after a Redis loss for every live gateway to push its records again
READY_TIMEOUT = 20.0  # a rebuild that cannot drain by then refuses the call (503)

_DECIMALS = ("audio_seconds", "cost")


class BudgetNotReady(redis.exceptions.RedisError):
    """Counters cannot be rebuilt safely yet (the biller answers 503, like Redis down)."""

# A request-log row as billing/biller.py's log_row builds it: its fields, in its order. Such a
# row is encoded as the list of its values (the names are the same in every record: about a
# third of the JSON work); decode() names them again. Any other row is encoded as an object.
_ROW_FIELDS = (
    "request_id", "organization_id", "virtual_endpoint_id", "access_key_id", "run_id", "endpoint",
    "logical_model_name", "logical_model_id", "physical_model_id", "provider_id", "stream", "status", "http_status",
    "error_code", "attempts", "input_tokens", "cached_input_tokens", "cache_creation_tokens", "output_tokens",
    "images", "audio_seconds", "usage_estimated", "cost", "cost_currency", "cost_credits", "charge", "price_snapshot",
    "client_disconnected", "started_at", "latency_ms", "ttfb_ms", "reasoning_tokens",
)
_I_AUDIO, _I_COST, _I_STARTED = (_ROW_FIELDS.index(name) for name in ("audio_seconds", "cost", "started_at"))

# KEYS: list, pushed, drained, epoch. ARGV: a new epoch's random part, records...
# -> {epoch, pushed, drained}. An epoch is "random:created" (Redis time, milliseconds).
_PUSH = """
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  local t = redis.call('TIME')
  epoch = ARGV[1] .. ':' .. string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('SET', KEYS[4], epoch)
end
for i = 2, #ARGV, 200 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 199, #ARGV)))
end
local pushed = redis.call('INCRBY', KEYS[2], #ARGV - 1)
return {epoch, pushed, tonumber(redis.call('GET', KEYS[3]) or '0')}
"""

# KEYS: list, drained, epoch. ARGV: batch size -> {epoch, drained, records...} in one step.
_READ = """
local out = {redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[2]) or '0'}
for _, r in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do table.insert(out, r) end
return out
"""

# KEYS: list, drained, epoch. ARGV: epoch and drained total read by the drainer, records
# written. Trims only the records it read: a restart since -> -1, another drainer's trim -> -2.
_TRIM = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] then return -2 end
redis.call('LTRIM', KEYS[1], ARGV[3], -1)
return redis.call('INCRBY', KEYS[2], ARGV[3])
"""

# KEYS: pushed, drained, epoch -> {epoch, pushed, drained, now (ms)}
_STATE = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[3]) or '', tonumber(redis.call('GET', KEYS[1]) or '0'),
        tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def encode(row: dict | None, charge) -> str:
    """One record: [row, charge]; the row's decimals as strings, its start time ISO 8601; a
    row of log_row's fields as the list of its values (see _ROW_FIELDS), else an object.
    A charge whose rate snapshot is the row's price snapshot less its "reserved" (what the
    biller writes) carries 0 in its place, so the snapshot is encoded once."""
    encoded = row
    if row is None:
        pass
    elif tuple(row) == _ROW_FIELDS:
        encoded = list(row.values())
        encoded[_I_AUDIO] = str(encoded[_I_AUDIO])
        encoded[_I_COST] = str(encoded[_I_COST])
        if isinstance(encoded[_I_STARTED], datetime):
            encoded[_I_STARTED] = encoded[_I_STARTED].isoformat()
    else:
        encoded = dict(row)
        for name in _DECIMALS:
            if name in encoded:
                encoded[name] = str(encoded[name])
        if isinstance(encoded.get("started_at"), datetime):
            encoded["started_at"] = encoded["started_at"].isoformat()
    if charge is not None:
        snapshot = charge.rate_snapshot
        if row is not None and _same_snapshot(snapshot, row.get("price_snapshot")):
            snapshot = 0
        charge = [charge.ve_id, charge.key_id, charge.amount, charge.request_id, snapshot]
    return _JSON([encoded, charge])


# json.dumps(..., separators=(",", ":")), without building an encoder per record
_JSON = json.JSONEncoder(separators=(",", ":")).encode


def _same_snapshot(charge_snapshot: dict, row_snapshot) -> bool:
    if not isinstance(row_snapshot, dict) or len(row_snapshot) != len(charge_snapshot) + ("reserved" in row_snapshot):
        return False
    get = row_snapshot.get
    for k, v in charge_snapshot.items():
        if not get(k, _MISSING) == v:
            return False
    return True


_MISSING = object()


def decode(raw: bytes | str):
    from billing.requestlog import PendingCharge

    row, charge = json.loads(raw)
    if isinstance(row, list):  # log_row's fields, in _ROW_FIELDS order
        if len(row) == len(_ROW_FIELDS) - 1:  # pushed by a gateway from before reasoning_tokens
            row = [*row, 0]
        row = dict(zip(_ROW_FIELDS, row, strict=True))
    if row is not None:
        for name in _DECIMALS:
            if name in row:
                row[name] = Decimal(row[name])
        if isinstance(row.get("started_at"), str):
            row["started_at"] = datetime.fromisoformat(row["started_at"])
    if charge is not None and charge[4] == 0:
        charge[4] = {k: v for k, v in row["price_snapshot"].items() if k != "reserved"}
    return row, PendingCharge(*charge) if charge is not None else None


class RedisLogSpool:
    """The gateway's LogWriter in Redis mode (same add / flush / flush_sync / pending).

    `fast` returns the budget's FastRedis of the running loop; `sync` is a redis.Redis for
    sync callers (drains, the exit hook)."""

    def __init__(self, fast, sync, prefix: str, interval: float = INTERVAL):
        self.fast = fast
        self.sync = sync
        self.key = f"{prefix}logq"
        self.lock_key = f"{prefix}logq:lock"
        self._keys = [self.key, f"{prefix}logq:pushed", f"{prefix}logq:drained", f"{prefix}logq:epoch"]
        self._epoch: bytes | None = None  # of the Redis our retained records were pushed to
        self._retained: deque = deque()  # (running total after the batch, records) until drained
        self._lost_batches: list | None = None
        self.interval = interval
        self._buf: list = []  # encoded records (put back) and (row, charge) tuples
        self._lock = threading.Lock()
        self._tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._wake: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.written = 0

    # --- the gateway: buffer and push --------------------------------------------------

    def add(self, row: dict | None = None, charge=None) -> None:
        # Encoded when pushed (every `interval`), not here: this runs right after a call's
        # answer went out, when the next call on the connection is arriving.
        with self._lock:
            self._buf.append((row, charge))
            size = len(self._buf)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a sync caller: flush_sync (or the exit hook) pushes it
        task = self._tasks.get(loop)
        if task is None or task.done():
            self._wake[loop] = asyncio.Event()
            self._tasks[loop] = loop.create_task(self._run(self._wake[loop]))
        if size >= MAX_BATCH:
            self._wake[loop].set()

    def pending(self) -> int:
        return len(self._buf)

    async def _run(self, wake: asyncio.Event) -> None:
        from billing.requestlog import run_every

        await run_every(self.interval, wake, self._push_logged)

    async def _push_logged(self) -> None:
        try:
            await self.push()
        except Exception as exc:  # Redis away: keep the records, try again next tick
            log.warning("request log push to Redis failed (%s); will retry", type(exc).__name__)

    def _take(self) -> list[str]:
        with self._lock:
            records, self._buf = self._buf, []
        encoded = [r if isinstance(r, str) else self._encode(r) for r in records]
        return [r for r in encoded if r is not None]

    @staticmethod
    def _encode(record: tuple) -> str | None:
        try:
            return encode(*record)
        except (TypeError, ValueError):  # a bug, not data loss to hide: loud, and the others go on
            log.exception("request log: record of request %s cannot be encoded; dropped",
                          (record[0] or {}).get("request_id") or getattr(record[1], "request_id", "?"))
            return None

    def _put_back(self, records: list[str]) -> None:
        with self._lock:
            self._buf[:0] = records
            if len(self._buf) > MAX_BUFFER:
                dropped = len(self._buf) - MAX_BUFFER
                del self._buf[:dropped]
                log.error("request log: %d rows dropped (Redis unreachable for long)", dropped)

    async def push(self) -> int:
        records = self._take()
        if not records:
            if self._retained:  # nothing new, but undrained records: learn the epoch and drained total
                self._pushed([], await self.fast().evalsha(_PUSH, self._keys, [secrets.token_hex(8)]))
                await self._repush_after_restart()
            return 0
        try:
            fast = self.fast()
            for start in range(0, len(records), MAX_BATCH):
                batch = records[start:start + MAX_BATCH]
                reply = await fast.evalsha(_PUSH, self._keys, [secrets.token_hex(8), *batch])
                self._pushed(batch, reply)
        except BaseException:
            self._put_back(records)  # a partly pushed batch is pushed again: the drain dedups
            raise
        await self._repush_after_restart()
        return len(records)

    def push_sync(self) -> int:
        records = self._take()
        if not records and not self._lost():
            return 0
        try:
            for start in range(0, len(records), MAX_BATCH):
                batch = records[start:start + MAX_BATCH]
                self._pushed(batch, self.sync.eval(_PUSH, 4, *self._keys, secrets.token_hex(8), *batch))
        except BaseException:
            self._put_back(records)
            raise
        lost = self._lost()
        if lost:
            self._put_back(lost)
            return self.push_sync() + len(records)
        return len(records)

    # --- against a Redis restart ------------------------------------------------------------

    def _pushed(self, batch: list[str], reply) -> None:
        """Keep `batch` until the drained total passes it; note a changed epoch."""
        epoch = reply[0] if isinstance(reply[0], bytes) else str(reply[0]).encode()
        pushed, drained = int(reply[1]), int(reply[2])
        with self._lock:
            if self._epoch is not None and epoch != self._epoch:
                # Redis restarted empty: what we kept from before must go again (after this batch).
                self._lost_batches = [records for _, records in self._retained]
                self._retained.clear()
            self._epoch = epoch
            if batch:
                self._retained.append((pushed, batch))
            while self._retained and self._retained[0][0] <= drained:
                self._retained.popleft()
            kept = sum(len(records) for _, records in self._retained)
            while kept > MAX_RETAINED and len(self._retained) > 1:
                kept -= len(self._retained.popleft()[1])

    def _lost(self) -> list[str]:
        with self._lock:
            lost = self._lost_batches
            self._lost_batches = None
        return [record for records in lost or () for record in records]

    async def _repush_after_restart(self) -> None:
        lost = self._lost()
        if lost:
            log.warning("request log: Redis lost its data; pushing %d undrained records again", len(lost))
            self._put_back(lost)
            await self.push()

    # --- LogWriter's interface -----------------------------------------------------------

    async def flush(self) -> int:
        """Push what this process buffered, then drain the list into SQL (tests, shutdown,
        a rebuild of counters: after it, every call settled here is in the database)."""
        from billing.requestlog import _executor

        await self.push()
        deferred: list = []
        written = await asyncio.get_running_loop().run_in_executor(_executor, self._drain_in_thread, deferred)
        for coroutine in deferred:
            try:
                await coroutine
            except Exception:
                log.exception("request log listener failed")
        return written

    async def ready_for_rebuild(self) -> None:
        """Before counters are rebuilt from the ledger: every charge settled anywhere must be
        in it. Push ours; if Redis lost its data less than LOSS_GRACE ago (or has no epoch
        yet: then this starts one), wait until the grace is over, so every live gateway had
        ticks to push what it kept; then drain until the drained total reaches what was
        pushed by then (another drainer may be doing it). Raises BudgetNotReady (the call
        gets a 503) when that cannot be done within READY_TIMEOUT."""
        from billing.requestlog import _executor

        await self.push()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + READY_TIMEOUT
        state = await self._state()
        if not state[0]:  # no epoch: a fresh or emptied Redis; start one, its grace begins now
            await self.fast().evalsha(_PUSH, self._keys, [secrets.token_hex(8)])
            state = await self._state()
        grace = float(getattr(settings, "BILLING_REDIS_LOSS_GRACE", LOSS_GRACE))
        created = int(state[0].rsplit(b":", 1)[1]) if b":" in state[0] else 0
        wait = (created + grace * 1000 - state[3]) / 1000
        if wait > 0:
            log.warning("Redis lost its data %.1f s ago: counters are rebuilt when every gateway pushed its "
                        "records again (in %.1f s)", grace - wait, wait)
            await asyncio.sleep(wait)
            await self.push()
            state = await self._state()
        target, epoch = state[1], state[0]
        while True:
            deferred: list = []
            await loop.run_in_executor(_executor, self._drain_in_thread, deferred)
            for coroutine in deferred:
                try:
                    await coroutine
                except Exception:
                    log.exception("request log listener failed")
            state = await self._state()
            if state[0] != epoch or state[2] >= target:
                return  # drained through what was pushed (or Redis was lost again: its rebuild waits anew)
            if time.monotonic() > deadline:
                raise BudgetNotReady("request log not drained; counters cannot be rebuilt safely")
            await asyncio.sleep(0.05)  # another drainer holds the lock

    async def _state(self) -> list:
        epoch, pushed, drained, now = await self.fast().evalsha(_STATE, self._keys[1:], [])
        epoch = epoch if isinstance(epoch, bytes) else str(epoch).encode()
        return [epoch, int(pushed), int(drained), int(now)]

    def _drain_in_thread(self, deferred: list) -> int:
        from django.db import connections

        try:
            return self.drain(deferred)
        finally:
            connections.close_all()  # a rare path (not per batch): leave no session behind

    def flush_sync(self, deferred: list | None = None) -> int:
        self.push_sync()
        return self.drain(deferred)

    # --- the drainer (Celery task, tests, shutdown) ---------------------------------------

    def drain(self, deferred: list | None = None, max_batches: int = 1000) -> int:
        """Write queued records to SQL, a batch per transaction, until the list is empty.
        Returns the rows written; 0 when another drainer holds the lock."""
        from billing.requestlog import _notify_written, write_batch

        token = secrets.token_hex(8)
        if not self.sync.set(self.lock_key, token, nx=True, ex=LOCK_SECONDS):
            return 0
        written = 0
        try:
            for _ in range(max_batches):
                epoch, drained, *raw = self.sync.eval(_READ, 3, self.key, self._keys[2], self._keys[3], MAX_BATCH)
                if not raw or not epoch:
                    break
                rows, charges = [], []
                for record in raw:
                    try:
                        row, charge = decode(record)
                    except (ValueError, TypeError, KeyError) as exc:  # never block the queue on one record
                        log.error("request log: undecodable record dropped (%s)", type(exc).__name__)
                        continue
                    if row is not None:
                        rows.append(row)
                    if charge is not None:
                        charges.append(charge)
                write_batch(rows, charges)
                trimmed = self.sync.eval(_TRIM, 3, self.key, self._keys[2], self._keys[3], epoch, drained, len(raw))
                if trimmed == -1:
                    break  # Redis restarted meanwhile: the list is not the one read (the rows are in SQL)
                if trimmed == -2:
                    continue  # another drainer trimmed meanwhile: read again (writing a row twice is a no-op)
                self.sync.expire(self.lock_key, LOCK_SECONDS)
                written += len(rows)
                self.written += len(rows)
                _notify_written(rows, deferred)
        finally:
            self.sync.eval(_UNLOCK, 1, self.lock_key, token)
        return written

    def queued(self) -> int:
        return int(self.sync.llen(self.key))
