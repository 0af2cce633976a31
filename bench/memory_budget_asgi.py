"""The ASGI app with the real biller on an in-memory budget that answers at once (bench
only: BENCH_APP=bench.memory_budget_asgi:application). Everything billing does except the
two Redis round trips (pricing, hold sizing, settle, log rows through the in-process
writer, as the budget is not Redis):
next to the NullBiller and the Redis runs it shows where billing's cost is."""

from billing import budget as budgets
from billing.budget import Settled
from tokenbill.asgi import application  # noqa: F401


class InstantBudget:
    name = "memory"

    async def reserve(self, *, request_id, ve_id, key_id, full, minimum, key_limit=None):
        return full

    async def settle(self, *, request_id, ve_id, key_id, charge, entry, key_limit=None):
        return Settled(charge, 10**15, False)


budgets.set_budget(InstantBudget())
