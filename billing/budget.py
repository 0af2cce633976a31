"""Reserve, then settle: the one interface billing's counters are moved through.

    reserved = await budget.reserve(request_id=..., ve_id=..., key_id=..., full=F, minimum=M)
    ... the call runs ...
    settled  = await budget.settle(request_id=..., ve_id=..., key_id=..., charge=C, entry=...)

`reserve` holds min(F, what the VE and the key can still pay) if that is at least M, else
holds nothing and returns 0. The check and the hold are one atomic step, so hundreds of
concurrent calls on one VE can never hold more than its balance, and credit_spend can
never pass credit_budget.

`settle` releases the hold and adds the charge in one atomic step. The charge is taken in
full when the VE (and key) can pay it: available = budget - spend - (reserved - this hold).
When the actual usage came out above the estimate and the balance cannot pay the excess,
the charge is capped at this call's own hold (the shortfall is recorded on the request
log); it never goes over the balance.

Two implementations:
- RedisBudget (billing/budget_redis.py): one Lua script per step; counters are a cache
  of the ledger, rebuilt from it when missing; ledger entries are written in batches.
- SqlBudget (billing/budget_sql.py): conditional UPDATEs on the VE and key rows (never
  read-then-write), the Reservation row and the ledger entry in the same transaction.

Holds expire (GATEWAY_TOTAL_TIMEOUT + a margin): `release_expired` (a Celery task) frees
the holds of calls whose process died. Settle after a sweep releases nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings


@dataclass(slots=True)
class ChargeEntry:
    """What the ledger entry of a charge carries besides the amount."""

    request_id: str
    rate_snapshot: dict = field(default_factory=dict)
    note: str = ""


@dataclass(slots=True)
class Settled:
    charged: int  # micro-credits actually added to spend
    balance: int | None  # VE budget - spend after it
    posted: bool  # the ledger entry is already written (SQL); else the caller queues it
    # True when the settle was sent but not yet answered (a leased call, billing/leases.py):
    # `charged` and `balance` are this process's view until then, and the budget calls the
    # caller's on_confirmed(charged) once, with what Redis actually took; the caller queues
    # the ledger entry then.
    deferred: bool = False


@dataclass(slots=True)
class Counters:
    budget: int
    spend: int
    reserved: int

    @property
    def balance(self) -> int:
        return self.budget - self.spend

    @property
    def available(self) -> int:
        return self.budget - self.spend - self.reserved


@dataclass(slots=True)
class Drift:
    ve_id: int
    counter: str
    found: int
    expected: int


class Budget(Protocol):
    name: str

    async def reserve(self, *, request_id: str, ve_id: int, key_id: int | None, full: int, minimum: int) -> int: ...

    async def settle(self, *, request_id: str, ve_id: int, key_id: int | None, charge: int,
                     entry: ChargeEntry) -> Settled: ...

    async def counters(self, ve_id: int) -> Counters: ...

    async def key_counters(self, key_id: int) -> tuple[int, int]: ...  # (spend, reserved)

    def release_expired(self) -> int: ...

    def reconcile(self, ve_id: int) -> list[Drift]: ...


def hold_seconds() -> float:
    """How long a hold lives: longer than any call may run."""
    return float(settings.GATEWAY_TOTAL_TIMEOUT) + 60.0


_budget: Budget | None = None


def get_budget() -> Budget:
    """Redis when REDIS_URL is set, SQL otherwise (one per process)."""
    global _budget
    if _budget is None:
        if settings.REDIS_URL:
            from billing.budget_redis import RedisBudget

            _budget = RedisBudget(settings.REDIS_URL, settings.REDIS_PREFIX)
        else:
            from billing.budget_sql import SqlBudget

            _budget = SqlBudget()
    return _budget


def set_budget(budget: Budget | None) -> None:
    global _budget
    _budget = budget
