"""Posting to the append-only ledger.

`post_entry` is the one way credits move. In one transaction it inserts the entry (its
unique idempotency key makes a replay a no-op that returns the first entry) and moves
the VE's matching SQL counter by the same amount, so credit_budget and credit_spend stay
equal to the sums of the VE's entries. The VE row is updated with F() expressions, so
concurrent posts on one VE serialize on the row lock instead of losing an update.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F, Sum

from billing.models import LedgerEntry, LedgerKind
from routing.models import AccessKey, VirtualEndpoint

log = logging.getLogger("tokenbill.billing")


@dataclass(frozen=True)
class Posted:
    entry: LedgerEntry
    created: bool


def post_entry(
    *,
    virtual_endpoint: VirtualEndpoint,
    kind: str,
    amount: int,
    idempotency_key: str,
    access_key: AccessKey | None = None,
    request_id: str = "",
    payment=None,
    note: str = "",
    rate_snapshot: dict | None = None,
    created_by=None,
    update_counters: bool = True,
) -> Posted:
    """Post one entry once. `update_counters=False` is for callers that already moved the
    counters atomically themselves (the gateway's settle step)."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError("ledger amounts are int micro-credits")
    with transaction.atomic():
        try:
            with transaction.atomic():
                entry = LedgerEntry.objects.create(
                    virtual_endpoint=virtual_endpoint,
                    access_key=access_key,
                    kind=kind,
                    amount=amount,
                    idempotency_key=idempotency_key,
                    request_id=request_id,
                    payment=payment,
                    note=note,
                    rate_snapshot=rate_snapshot or {},
                    created_by=created_by,
                )
        except IntegrityError:
            existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
            if existing is None:
                raise
            return Posted(existing, False)
        if update_counters:
            _move_counters(virtual_endpoint.pk, access_key.pk if access_key else None, kind, amount)
    for listener in list(_listeners):
        transaction.on_commit(lambda listener=listener: _notify(listener, entry))
    return Posted(entry, True)


def _notify(listener, entry: LedgerEntry) -> None:
    """A listener runs after the entry committed: its failure must not turn a posted entry
    into an error for the caller (who might retry and post it twice). Logged; the periodic
    reconciliation repairs the counters it did not move."""
    try:
        listener(entry)
    except Exception:
        log.exception("ledger listener %s failed on entry %s (reconcile will repair)",
                      getattr(listener, "__qualname__", listener), entry.pk)


def _move_counters(ve_pk: int, key_pk: int | None, kind: str, amount: int) -> None:
    if kind == LedgerKind.CHARGE:
        VirtualEndpoint.objects.filter(pk=ve_pk).update(credit_spend=F("credit_spend") + amount)
        if key_pk is not None:
            AccessKey.objects.filter(pk=key_pk).update(credit_spend=F("credit_spend") + amount)
    else:
        VirtualEndpoint.objects.filter(pk=ve_pk).update(credit_budget=F("credit_budget") + amount)


# Called (after commit) with every newly posted entry: billing's Redis counters and the
# low-balance alerts subscribe here.
_listeners: list = []


def on_posted(listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def ledger_sums(virtual_endpoint_id: int) -> tuple[int, int]:
    """(budget, spend) as the ledger says: the truth that counters are checked against."""
    rows = (
        LedgerEntry.objects.filter(virtual_endpoint_id=virtual_endpoint_id)
        .values("kind")
        .annotate(total=Sum("amount"))
    )
    budget = spend = 0
    for row in rows:
        if row["kind"] == LedgerKind.CHARGE:
            spend += row["total"] or 0
        else:
            budget += row["total"] or 0
    return budget, spend
