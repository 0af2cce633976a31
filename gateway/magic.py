"""`/tokenbill` answers (minimal placeholder written by the gateway; billing owns this file).

Contract used by gateway/app.py: `async def answer(ctx: billing.gate.CallContext) -> str`,
the assistant text to send (free). Never include an API key, a provider credential or a
base URL.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async

from billing.gate import CallContext
from billing.money import format_credits_human


def _balances(ve_id: int) -> tuple[int, int]:
    from routing.models import VirtualEndpoint

    ve = VirtualEndpoint.objects.only("credit_budget", "credit_spend").get(pk=ve_id)
    return ve.credit_budget, ve.credit_spend


async def answer(ctx: CallContext) -> str:
    budget, spend = await sync_to_async(_balances, thread_sensitive=False)(ctx.ve.id)
    models = ", ".join(sorted(ctx.ve.allowed_model_names)) or "none"
    return (
        f"Virtual endpoint: {ctx.ve.name}\n"
        f"Balance: {format_credits_human(budget - spend)} credits\n"
        f"Budget: {format_credits_human(budget)} credits\n"
        f"Spend: {format_credits_human(spend)} credits\n"
        f"Models: {models}"
    )
