"""Keeping counters equal to the ledger: sweep dead holds, post lost charges, repair drift.

Run by Celery beat (billing/tasks.py), in this order:

1. `release_expired_holds`: holds of calls whose process died are released.
2. `post_unposted_charges` (Redis only): a charge Redis recorded more than RETAIN seconds
   ago that the ledger still lacks belongs to a gateway process that died before its
   batch was written; it is posted now (its request id is its idempotency key, so a late
   batch of the living process cannot double it), then the record is dropped.
3. `reconcile_all`: every VE's counters are compared with its ledger sums and repaired;
   each repair is a DriftReport row and a warning in the log, with the amounts. A VE whose
   ledger spend exceeds its ledger budget cannot be repaired: it is recorded and suspended
   (`_suspend_overspent`).
"""

from __future__ import annotations

import logging
import time

from django.db import IntegrityError, transaction

from billing.budget import Drift, get_budget
from billing.budget_sql import SqlBudget
from billing.models import LedgerEntry
from billing.requestlog import PendingCharge, _post_charge
from routing.models import VirtualEndpoint

log = logging.getLogger("tokenbill.billing")


def release_expired_holds() -> int:
    return get_budget().release_expired()


def post_unposted_charges(now: float | None = None) -> int:
    budget = get_budget()
    if budget.name != "redis":
        return 0  # SQL settle writes the ledger entry in its own transaction
    from billing.budget_redis import RETAIN

    cutoff = (now or time.time()) - RETAIN
    posted = 0
    known = list(budget.known_ves())
    existing = set(VirtualEndpoint.objects.filter(id__in=known).values_list("id", flat=True))
    for ve_id in known:
        if ve_id not in existing:
            # Redis can outlive a VE (deleted, or a restored database): nothing to post it to.
            log.warning("Redis holds counters for VE %s, which no longer exists; skipped", ve_id)
            continue
        old = {rid: v for rid, v in budget.unposted(ve_id).items() if v[2] < cutoff}
        if not old:
            continue
        have = set(LedgerEntry.objects.filter(idempotency_key__in=list(old)).values_list("idempotency_key", flat=True))
        for rid, (key_id, amount, _) in old.items():
            if rid not in have:
                log.warning("posting charge %s (%s µcr on VE %s) that its gateway process never wrote", rid, amount,
                            ve_id)
                _post_charge(PendingCharge(ve_id, key_id, amount, rid, {"recovered": "redis unposted record"}))
                posted += 1
        budget.forget_unposted(ve_id, list(old))
    return posted


def reconcile_all() -> list[Drift]:
    budget = get_budget()
    drifts: list[Drift] = []
    ve_ids = list(VirtualEndpoint.objects.values_list("id", flat=True))
    if budget.name == "redis":
        known = set(budget.known_ves())
        for ve_id in ve_ids:
            if ve_id in known:
                drifts += budget.reconcile(ve_id)
    # The SQL counters: the budget itself in embedded mode, the mirror the console reads in
    # Redis mode (post_entry moves it with each batch).
    sql = budget if budget.name == "sql" else SqlBudget()
    for ve_id in ve_ids:
        try:
            drifts += sql.reconcile(ve_id)
        except IntegrityError:  # the mirror cannot hold spend > budget (ve_spend_within_budget)
            _suspend_overspent(ve_id)
    for d in drifts:
        log.warning("drift repaired on VE %s: %s was %s, ledger says %s (%+d µcr)", d.ve_id, d.counter, d.found,
                    d.expected, d.found - d.expected)
    return drifts


def _suspend_overspent(ve_id: int) -> None:
    """The ledger charged more than the VE was ever given (a lost Redis, a bug): no counter
    can be repaired to that, and serving on would widen it. Record it (a DriftReport with
    counter "overspend": found = ledger spend, expected = ledger budget, once per amount) and
    suspend the VE; the merchant tops it up or grants the difference, then re-activates it."""
    from billing.ledger import ledger_sums
    from billing.models_usage import DriftReport
    from routing.models import EndpointStatus
    from routing.services import config_changed

    budget, spend = ledger_sums(ve_id)
    if spend <= budget:
        return
    log.error("VE %s: ledger spend %s exceeds its budget %s (%+d µcr); VE suspended", ve_id, spend, budget,
              spend - budget)
    with transaction.atomic():
        if not DriftReport.objects.filter(virtual_endpoint_id=ve_id, counter="overspend", found=spend,
                                          expected=budget).exists():
            DriftReport.objects.create(virtual_endpoint_id=ve_id, store="ledger", counter="overspend", found=spend,
                                       expected=budget)
        if VirtualEndpoint.objects.filter(pk=ve_id).exclude(status=EndpointStatus.SUSPENDED).update(
                status=EndpointStatus.SUSPENDED):
            config_changed()  # the gateways' snapshots refuse it (403 endpoint_suspended)


def run() -> dict:
    released = release_expired_holds()
    posted = post_unposted_charges()
    drifts = reconcile_all()
    return {"released": released, "posted": posted,
            "drifts": [{"ve": d.ve_id, "counter": d.counter, "found": d.found, "expected": d.expected}
                       for d in drifts]}
