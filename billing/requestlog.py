"""Request log rows (and, in Redis mode, charge ledger entries) written in batches.

The gateway's hot path only appends to an in-memory buffer. A background task per event
loop flushes it every INTERVAL seconds, or as soon as MAX_ROWS are waiting, in one
transaction: the ledger entries (the unique request id makes a re-flush a no-op) and
then the log rows, each as one executemany (billing/bulk.py: bulk_create cost ~0.3 ms of
CPU per row, taken from the event loop through the GIL).

Nothing is lost on a clean shutdown: the gateway's lifespan shutdown awaits `flush()`,
and an atexit hook flushes what is left. A crash loses the buffer: the log rows are gone,
but in Redis mode every charge is also held in Redis's "unposted" record, from which the
reconciliation task posts the missing ledger entries (billing/reconcile.py); in SQL mode
charges are in the ledger before settle returns.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from dataclasses import dataclass

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync

from django.db import IntegrityError, connections, transaction
from django.db.models import F

from billing.bulk import insert_rows
from billing.ledger import post_entry
from billing.models import LedgerEntry, LedgerKind, RequestLog
from routing.models import AccessKey, VirtualEndpoint

log = logging.getLogger("tokenbill.billing")

INTERVAL = 0.5
MAX_ROWS = 500
MAX_BUFFER = 100_000  # beyond this (database down for long) the oldest log rows are dropped
CONNECTION_MAX_AGE = 60.0  # seconds the writer thread keeps one database connection

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenbill-log-writer")
_connected_at: float | None = None  # when the writer thread last (re)opened its connection


@dataclass(slots=True)
class PendingCharge:
    ve_id: int
    key_id: int | None
    amount: int
    request_id: str
    rate_snapshot: dict


class LogWriter:
    def __init__(self, interval: float = INTERVAL, max_rows: int = MAX_ROWS):
        self.interval = interval
        self.max_rows = max_rows
        self._rows: list[dict] = []
        self._charges: list[PendingCharge] = []
        self._lock = threading.Lock()  # the buffer is shared by every loop and thread of the process
        self._write_lock = threading.Lock()
        self._tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._wake: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.written = 0

    # --- hot path ----------------------------------------------------------------------

    def add(self, row: dict | None = None, charge: PendingCharge | None = None) -> None:
        with self._lock:
            if row is not None:
                self._rows.append(row)
            if charge is not None:
                self._charges.append(charge)
            size = len(self._rows) + len(self._charges)
        self._ensure_task(size >= self.max_rows)

    def _ensure_task(self, urgent: bool) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a sync caller): the atexit hook or an explicit flush writes it
        task = self._tasks.get(loop)
        if task is None or task.done():
            self._wake[loop] = asyncio.Event()
            self._tasks[loop] = loop.create_task(self._run(self._wake[loop]))
        if urgent:
            self._wake[loop].set()

    async def _run(self, wake: asyncio.Event) -> None:
        await run_every(self.interval, wake, self._flush_logged)

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:  # keep the loop alive; the buffer is retried next time
            log.exception("request log flush failed; will retry")

    # --- writing -----------------------------------------------------------------------

    def pending(self) -> int:
        return len(self._rows) + len(self._charges)

    async def flush(self) -> int:
        # Nothing buffered and no batch being written: done. A batch the timer took is
        # waited for (flush_sync takes the write lock after it): after flush, every row
        # added before it is in the database.
        if not self.pending() and not self._write_lock.locked():
            return 0
        # Its own thread, not Django's shared "sync thread": a big batch must never make the
        # gateway's other sync_to_async work (budget steps, cache reads) wait behind it.
        # Listeners' coroutines (the live feed's channel-layer sends) come back here and run
        # on this loop, over its long-lived connections: a loop per batch in the writer
        # thread (async_to_sync) cost a thread, a loop and a Redis connection every batch.
        deferred: list = []
        written = await asyncio.get_running_loop().run_in_executor(_executor, self._flush_in_thread, deferred)
        for coroutine in deferred:
            try:
                await coroutine
            except Exception:
                log.exception("request log listener failed")
        return written

    def _flush_in_thread(self, deferred: list | None = None) -> int:
        # The writer thread keeps its database connection between batches (reconnecting
        # every half second cost more than the batch); a failed batch drops it, and it is
        # recycled every CONNECTION_MAX_AGE seconds.
        global _connected_at
        now = time.monotonic()
        if _connected_at is None or now - _connected_at > CONNECTION_MAX_AGE:
            connections.close_all()  # this thread's only
            _connected_at = now
        try:
            return self.flush_sync(deferred)
        except Exception:
            connections.close_all()
            _connected_at = None
            raise

    def flush_sync(self, deferred: list | None = None) -> int:
        """Write what is buffered. Listeners' coroutines go to `deferred` when given (the
        caller awaits them on its loop), else they run here to completion."""
        with self._write_lock:
            with self._lock:
                rows, charges = self._rows, self._charges
                self._rows, self._charges = [], []
            if not rows and not charges:
                return 0
            try:
                self._write(rows, charges)
            except Exception:
                with self._lock:  # put them back, in order, for the next attempt
                    self._rows[:0] = rows[-MAX_BUFFER:]
                    self._charges[:0] = charges
                raise
            self.written += len(rows)
        _notify_written(rows, deferred)
        return len(rows)

    def _write(self, rows: list[dict], charges: list[PendingCharge]) -> None:
        write_batch(rows, charges)


async def run_every(interval: float, wake: asyncio.Event, work) -> None:
    """Await `work()` every `interval` seconds, or as soon as `wake` is set; forever (a
    writer's per-loop task; `work` must not raise). A timer sets the event rather than
    wait_for(): Python 3.11's wait_for can swallow a cancellation that lands as it times
    out, and the loop would never end."""
    loop = asyncio.get_running_loop()
    while True:
        timer = loop.call_later(interval, wake.set)
        try:
            await wake.wait()
        finally:
            timer.cancel()
        wake.clear()
        await work()


def write_batch(rows: list[dict], charges: list[PendingCharge]) -> None:
    """One transaction: the charges' ledger entries, then the log rows (a replay is a no-op)."""
    with transaction.atomic():
        ve_ids = post_charges(charges)
        insert_rows(RequestLog, rows, ignore_conflicts=True)
    _check_low_balance(ve_ids)
    # Redis keeps its unposted-charge records RETAIN seconds on purpose (see
    # billing/budget_redis.py); the sweep drops them once the ledger has them.


def post_charges(charges: list[PendingCharge]) -> set[int]:
    """Post a batch of charges: one INSERT for the entries, one UPDATE per VE and per key.

    Entries already in the ledger (a re-flush, or the reconciliation posted them) are left
    out first; if a racing writer still wins a unique key, or the SQL mirror would pass its
    budget, the batch is rolled back and posted one entry at a time (post_entry decides).
    Rows are updated in id order, VEs then keys, so two batches cannot deadlock.
    """
    if not charges:
        return set()
    have = set(LedgerEntry.objects.filter(idempotency_key__in=[c.request_id for c in charges])
               .values_list("idempotency_key", flat=True))
    new = list({c.request_id: c for c in charges if c.request_id not in have}.values())
    try:
        with transaction.atomic():
            insert_rows(LedgerEntry, [
                dict(virtual_endpoint_id=c.ve_id, access_key_id=c.key_id, kind=LedgerKind.CHARGE, amount=c.amount,
                     idempotency_key=c.request_id, request_id=c.request_id, rate_snapshot=c.rate_snapshot)
                for c in new])
            for ve_id, total in sorted(_sums(new, "ve_id").items()):
                VirtualEndpoint.objects.filter(pk=ve_id).update(credit_spend=F("credit_spend") + total)
            for key_id, total in sorted(_sums(new, "key_id").items()):
                AccessKey.objects.filter(pk=key_id).update(credit_spend=F("credit_spend") + total)
    except IntegrityError:
        for charge in new:
            _post_charge(charge)
    return {c.ve_id for c in new}


def _sums(charges: list[PendingCharge], field: str) -> dict[int, int]:
    sums: dict[int, int] = {}
    for c in charges:
        owner = getattr(c, field)
        if owner is not None:
            sums[owner] = sums.get(owner, 0) + c.amount
    return sums


def _check_low_balance(ve_ids: set[int]) -> None:
    """Once per VE per batch, not once per call (billing/alerts.py sends at most one alert)."""
    if not ve_ids:
        return
    try:
        from billing.alerts import check_low_balance
    except ImportError:  # pragma: no cover
        return
    for ve_id in sorted(ve_ids):
        try:
            check_low_balance(ve_id)
        except Exception:  # an alert must never lose a batch
            log.exception("low-balance check for VE %s failed", ve_id)


def _post_charge(charge: PendingCharge) -> None:
    kwargs = dict(
        virtual_endpoint=VirtualEndpoint(pk=charge.ve_id),
        access_key=AccessKey(pk=charge.key_id) if charge.key_id else None,
        kind=LedgerKind.CHARGE, amount=charge.amount, idempotency_key=charge.request_id,
        request_id=charge.request_id, rate_snapshot=charge.rate_snapshot,
    )
    try:
        # Redis already moved its counters; this moves the SQL mirror of them.
        post_entry(**kwargs)
    except IntegrityError:
        # The SQL mirror would pass its budget (it lags Redis after a Redis rebuild):
        # record the charge anyway; reconciliation repairs the mirror from the ledger.
        log.error("charge %s posted without moving SQL counters (mirror over budget)", charge.request_id)
        post_entry(**kwargs, update_counters=False)


# Called with every committed batch of row dicts, in the writer's thread (the console's
# live feed registers here; billing never imports console). A listener may return a
# coroutine: the async flush awaits it on the gateway's loop, a sync flush runs it to
# completion. A listener's failure never loses a batch.
_written_listeners: list = []


def on_written(listener) -> None:
    if listener not in _written_listeners:
        _written_listeners.append(listener)


def _notify_written(rows: list[dict], deferred: list | None = None) -> None:
    for listener in list(_written_listeners) if rows else ():
        try:
            result = listener(rows)
            if asyncio.iscoroutine(result):
                if deferred is not None:
                    deferred.append(result)
                else:
                    async_to_sync(_awaited)(result)
        except Exception:
            log.exception("request log listener failed")


async def _awaited(coroutine):
    return await coroutine


async def close_writer_connections() -> None:
    """The writer thread's database connection, at shutdown."""
    global _connected_at
    _connected_at = None
    await asyncio.get_running_loop().run_in_executor(_executor, connections.close_all)


_writer: LogWriter | None = None


def get_writer():
    """This process's writer: with the Redis budget, the spool to Redis (billing/logspool.py:
    no SQL in the gateway process); otherwise the in-process batch writer above."""
    global _writer
    if _writer is None:
        from billing import budget as budgets

        budget = budgets.get_budget()
        if budget.name == "redis":
            from django.conf import settings

            from billing.logspool import RedisLogSpool

            _writer = RedisLogSpool(budget._fast, budget._sync, settings.REDIS_PREFIX)
        else:
            _writer = LogWriter()
        atexit.register(_flush_at_exit, _writer)
    return _writer


def _flush_at_exit(writer) -> None:
    if writer.pending():
        try:
            # The spool only hands its rows to Redis (the drain task writes them); the
            # in-process writer writes them itself.
            getattr(writer, "push_sync", writer.flush_sync)()
        except Exception:
            log.exception("request log rows lost at exit")
