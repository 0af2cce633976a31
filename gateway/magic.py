"""`/tokenbill` answers and the "credits ran out" message (billing owns this file).

Contract used by gateway/app.py: `async def answer(ctx: billing.gate.CallContext) -> str`,
the assistant text to send; it is free (no admit, no settle). The numbers come from the
budget (the same counters admit checks: Redis or SQL), the model list from the routing
snapshot. What is never in it: an API key (not even the key's prefix), a provider
credential, a provider or base URL (tests/billing/test_magic.py checks with canaries).
"""

from __future__ import annotations

from billing.gate import CallContext
from billing.money import format_credits_human


def wants(body: dict) -> str | None:
    """The argument of a `/tokenbill` last user message ('' or e.g. 'models'), else None."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = next((p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"), "")
            if isinstance(content, str) and content.strip().startswith("/tokenbill"):
                return content.strip()[len("/tokenbill"):].strip().lower()
            return None
    return None


def allowed_models(ve, key) -> list[str]:
    names = set(ve.allowed_model_names)
    if key is not None and key.allowed_model_names:
        names &= set(key.allowed_model_names)
    return sorted(names)


async def answer(ctx: CallContext) -> str:
    from billing.budget import get_budget

    budget = get_budget()
    counters = await budget.counters(ctx.ve.id)
    models = allowed_models(ctx.ve, ctx.key)
    if wants(ctx.body) == "models":
        return "Models you can call:\n" + ("\n".join(f"- {name}" for name in models) or "- none")
    lines = [
        f"**{ctx.ve.name}**",
        f"Balance: {format_credits_human(counters.balance)} credits",
        f"Budget: {format_credits_human(counters.budget)} credits",
        f"Spend: {format_credits_human(counters.spend)} credits",
    ]
    if counters.reserved:
        lines.append(f"Held by calls in progress: {format_credits_human(counters.reserved)} credits")
    if ctx.key is not None:
        spend, _ = await budget.key_counters(ctx.key.id)
        limit = "no limit" if ctx.key.credit_limit is None else f"limit {format_credits_human(ctx.key.credit_limit)}"
        lines.append(f"This key ({ctx.key.name}): {format_credits_human(spend)} credits used, {limit}")
    lines.append("Models: " + (", ".join(models) or "none"))
    return "\n".join(lines)


def exhausted_text(ve, checkout_url: str) -> str:
    """The assistant message of the "message" exhaustion mode: kind, short, with the link."""
    return (
        "Sorry, this assistant has run out of credits, so I can't answer right now. "
        f"You can top up here and continue right away: {checkout_url}"
    )
