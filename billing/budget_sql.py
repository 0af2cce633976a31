"""The embedded default budget: conditional UPDATEs on the VE and key rows.

Every hold and every charge is one UPDATE whose WHERE clause is the check
(`credit_budget >= credit_spend + credit_reserved + amount`), so the database applies the
check and the write as one step: PostgreSQL re-evaluates the WHERE after taking the row
lock (READ COMMITTED), SQLite runs IMMEDIATE transactions one at a time. Nothing is read
and then written. Rows are always locked VE first, then key, so two calls cannot deadlock.

The settle transaction also inserts the charge's ledger entry (post_entry with
update_counters=False: the UPDATE already moved the counters). The UPDATE is already a
write on the hot path, and one more INSERT in the same transaction means counters and
ledger can never disagree in this mode, even if the process dies right after.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import F, Q, Sum, Value
from django.utils import timezone

from billing.budget import ChargeEntry, Counters, Drift, Settled, hold_seconds
from billing.ledger import ledger_sums, post_entry
from billing.models import LedgerEntry, LedgerKind
from billing.models_usage import DriftReport, Reservation
from routing.models import AccessKey, VirtualEndpoint

# Half a signed BIGINT: a hold above it can never be paid, and adding it to
# credit_reserved would overflow the column (SQLite OverflowError, Postgres DataError).
MAX_HOLD = 2**62

log = logging.getLogger("tokenbill.billing")


def _ve_can_pay(amount: int, releasing: int = 0) -> Q:
    return Q(credit_budget__gte=F("credit_spend") + F("credit_reserved") - Value(releasing) + Value(amount))


def _key_can_pay(amount: int, releasing: int = 0) -> Q:
    return Q(credit_limit__isnull=True) | Q(
        credit_limit__gte=F("credit_spend") + F("credit_reserved") - Value(releasing) + Value(amount)
    )


class SqlBudget:
    name = "sql"
    attempts = 3

    def _async(self, fn):
        # Every budget step runs on Django's one "sync thread", in order: SQLite allows one
        # writer anyway, and on PostgreSQL this mode is the small embedded shape (production
        # uses the Redis budget); it also keeps one connection, closed like any other.
        return sync_to_async(fn)

    async def reserve(self, *, request_id, ve_id, key_id, full, minimum) -> int:
        return await self._async(self.reserve_sync)(request_id, ve_id, key_id, full, minimum)

    async def settle(self, *, request_id, ve_id, key_id, charge, entry: ChargeEntry) -> Settled:
        return await self._async(self.settle_sync)(request_id, ve_id, key_id, charge, entry)

    async def counters(self, ve_id) -> Counters:
        return await self._async(self.counters_sync)(ve_id)

    async def key_counters(self, key_id) -> tuple[int, int]:
        return await self._async(self.key_counters_sync)(key_id)

    # --- reserve ---------------------------------------------------------------------

    def reserve_sync(self, request_id: str, ve_id: int, key_id: int | None, full: int, minimum: int) -> int:
        amount = full
        for _ in range(self.attempts):
            if self._hold(request_id, ve_id, key_id, amount):
                return amount
            # Could not hold it all: hold what is left, if that still buys a useful call.
            # The read only sizes the next attempt; the attempt itself is still conditional.
            amount = min(full, self._available(ve_id, key_id))
            if amount < minimum or amount <= 0:
                return 0
        return 0

    def _hold(self, request_id, ve_id, key_id, amount) -> bool:
        if amount > MAX_HOLD:
            # No VE can pay this (max_tokens=10**30): refuse like any unaffordable hold, so
            # the caller retries with what is available instead of overflowing a BIGINT.
            return False
        with transaction.atomic():
            if not VirtualEndpoint.objects.filter(_ve_can_pay(amount), pk=ve_id).update(
                credit_reserved=F("credit_reserved") + amount
            ):
                return False
            if key_id is not None and not AccessKey.objects.filter(_key_can_pay(amount), pk=key_id).update(
                credit_reserved=F("credit_reserved") + amount
            ):
                transaction.set_rollback(True)
                return False
            Reservation.objects.create(
                request_id=request_id, virtual_endpoint_id=ve_id, access_key_id=key_id, amount=amount,
                expires_at=timezone.now() + timedelta(seconds=hold_seconds()),
            )
            return True

    def _available(self, ve_id, key_id) -> int:
        budget, spend, reserved = VirtualEndpoint.objects.filter(pk=ve_id).values_list(
            "credit_budget", "credit_spend", "credit_reserved").get()
        available = budget - spend - reserved
        if key_id is not None:
            limit, kspend, kreserved = AccessKey.objects.filter(pk=key_id).values_list(
                "credit_limit", "credit_spend", "credit_reserved").get()
            if limit is not None:
                available = min(available, limit - kspend - kreserved)
        return available

    # --- settle ----------------------------------------------------------------------

    def settle_sync(self, request_id, ve_id, key_id, charge, entry: ChargeEntry) -> Settled:
        with transaction.atomic():
            # Deleting the hold is what entitles us to release it: if the expiry sweep got
            # there first, it already released it and we must not release it twice.
            held = Reservation.objects.filter(pk=request_id).values_list("amount", flat=True).first() or 0
            if held and not Reservation.objects.filter(pk=request_id).delete()[0]:
                held = 0
            charged = self._charge(ve_id, key_id, held, charge)
            if charged:
                post_entry(
                    virtual_endpoint=VirtualEndpoint(pk=ve_id), access_key=AccessKey(pk=key_id) if key_id else None,
                    kind=LedgerKind.CHARGE, amount=charged, idempotency_key=entry.request_id,
                    request_id=entry.request_id, rate_snapshot=entry.rate_snapshot, note=entry.note,
                    update_counters=False,
                )
            budget, spend = VirtualEndpoint.objects.filter(pk=ve_id).values_list("credit_budget", "credit_spend").get()
        return Settled(charged, budget - spend, True)

    def _charge(self, ve_id, key_id, held, charge) -> int:
        """Release `held` and add the charge: in full if the balance pays it, else capped at `held`."""
        if charge > held:
            with transaction.atomic():
                if self._move(ve_id, key_id, held, charge, check=True):
                    return charge
                transaction.set_rollback(True)
            charge = held
        self._move(ve_id, key_id, held, charge, check=False)
        return charge

    def _move(self, ve_id, key_id, held, charge, *, check: bool) -> bool:
        ves = VirtualEndpoint.objects.filter(pk=ve_id)
        if check:
            ves = ves.filter(_ve_can_pay(charge, held))
        if not ves.update(credit_reserved=F("credit_reserved") - held, credit_spend=F("credit_spend") + charge):
            return False
        if key_id is None:
            return True
        keys = AccessKey.objects.filter(pk=key_id)
        if check:
            keys = keys.filter(_key_can_pay(charge, held))
        return bool(keys.update(credit_reserved=F("credit_reserved") - held, credit_spend=F("credit_spend") + charge))

    # --- reads, sweep, reconcile -------------------------------------------------------

    def counters_sync(self, ve_id) -> Counters:
        return Counters(*VirtualEndpoint.objects.filter(pk=ve_id).values_list(
            "credit_budget", "credit_spend", "credit_reserved").get())

    def key_counters_sync(self, key_id) -> tuple[int, int]:
        return AccessKey.objects.filter(pk=key_id).values_list("credit_spend", "credit_reserved").get()

    def release_expired(self) -> int:
        released = 0
        for hold in Reservation.objects.filter(expires_at__lt=timezone.now()).values_list(
                "request_id", "virtual_endpoint_id", "access_key_id", "amount"):
            released += self._release(*hold)
        return released

    def _release(self, request_id, ve_id, key_id, amount) -> int:
        with transaction.atomic():
            if not Reservation.objects.filter(pk=request_id).delete()[0]:
                return 0  # settled meanwhile
            VirtualEndpoint.objects.filter(pk=ve_id).update(credit_reserved=F("credit_reserved") - amount)
            if key_id is not None:
                AccessKey.objects.filter(pk=key_id).update(credit_reserved=F("credit_reserved") - amount)
        return 1

    def reconcile(self, ve_id: int) -> list[Drift]:
        """Counters vs ledger sums (and holds), under the VE's row lock so no settle runs
        between the two reads; a difference is repaired and reported."""
        with transaction.atomic():
            ve = VirtualEndpoint.objects.select_for_update().get(pk=ve_id)
            budget, spend = ledger_sums(ve_id)
            reserved = Reservation.objects.filter(virtual_endpoint_id=ve_id).aggregate(s=Sum("amount"))["s"] or 0
            found = {"budget": ve.credit_budget, "spend": ve.credit_spend, "reserved": ve.credit_reserved}
            expected = {"budget": budget, "spend": spend, "reserved": reserved}
            drifts = [Drift(ve_id, c, found[c], expected[c]) for c in found if found[c] != expected[c]]
            if drifts:
                VirtualEndpoint.objects.filter(pk=ve_id).update(
                    credit_budget=budget, credit_spend=spend, credit_reserved=reserved)
                DriftReport.objects.bulk_create(
                    [DriftReport(virtual_endpoint_id=ve_id, store="sql", counter=d.counter, found=d.found,
                                 expected=d.expected) for d in drifts])
            self._reconcile_keys(ve_id)
        return drifts

    def _reconcile_keys(self, ve_id: int) -> None:
        """Key counters too (under the same VE lock: key rows move only after the VE row)."""
        spend = dict(LedgerEntry.objects.filter(virtual_endpoint_id=ve_id, kind=LedgerKind.CHARGE,
                                                access_key__isnull=False)
                     .values_list("access_key_id").annotate(s=Sum("amount")).values_list("access_key_id", "s"))
        held = dict(Reservation.objects.filter(virtual_endpoint_id=ve_id, access_key__isnull=False)
                    .values_list("access_key_id").annotate(s=Sum("amount")).values_list("access_key_id", "s"))
        for key_id, kspend, kheld in AccessKey.objects.filter(virtual_endpoint_id=ve_id).values_list(
                "id", "credit_spend", "credit_reserved"):
            if (kspend, kheld) != (spend.get(key_id, 0), held.get(key_id, 0)):
                log.warning("key %s counters repaired: spend %s -> %s, reserved %s -> %s", key_id, kspend,
                            spend.get(key_id, 0), kheld, held.get(key_id, 0))
                AccessKey.objects.filter(pk=key_id).update(credit_spend=spend.get(key_id, 0),
                                                           credit_reserved=held.get(key_id, 0))
