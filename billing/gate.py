"""The two seams where the gateway asks billing: admit a call, then settle it.

The gateway (gateway/app.py) calls, for every metered call:

    admission = await biller.admit(ctx)            # before any upstream call
    ... route, call upstream, stream ...
    settlement = await biller.settle(ctx, admission, outcome)   # exactly once, whatever happened

and `await biller.record(ctx, outcome)` for calls refused before admission (bad model,
rate limited, budget exhausted) so they still reach the request log.

admit() raises BudgetExhausted or RateLimited; it may clamp max_tokens (Admission.max_tokens)
and restrict which routes may serve (Admission.allowed_route_ids: routes whose price the
reservation covers). settle() releases the reservation and adds the actual charge in one
atomic step, then queues the ledger entry and the request log row (off the hot path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from routing.snapshot import AccessKeySnap, LogicalModelSnap, RouteSnap, VirtualEndpointSnap


# Endpoints whose calls are chat calls (billed, held and answered as chat): the inbound
# APIs of gateway/apis/ run the chat path under their own name, for the request log.
CHAT_ENDPOINTS = frozenset({"chat.completions", "messages", "responses", "completions"})


@dataclass(slots=True)
class CallContext:
    request_id: str
    endpoint: str  # "chat.completions", "embeddings", "images.generations", ...
    ve: VirtualEndpointSnap
    key: AccessKeySnap
    model: LogicalModelSnap | None
    body: dict
    stream: bool = False
    run_id: str = ""
    started_at: float = 0.0  # time.time()
    requested_model: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(slots=True)
class Admission:
    reserved: int = 0  # micro-credits held until settle
    # The gateway must send at most this many output tokens; None: the hold pays the worst
    # case (the client's limit, or the model's own output cap), so no limit is added.
    max_tokens: int | None = None
    allowed_route_ids: frozenset[int] | None = None  # None: any route
    handle: Any = None  # the implementation's own state


@dataclass(slots=True)
class Outcome:
    route: RouteSnap | None  # the route that served, None if none did
    usage: Any = None  # gateway.adapters.base.Usage or None
    attempts: list[dict] = field(default_factory=list)
    status: str = "ok"  # billing.models.RequestStatus
    http_status: int = 200
    error_code: str = ""
    client_disconnected: bool = False
    latency_ms: int = 0
    ttfb_ms: int | None = None
    units: dict = field(default_factory=dict)  # non-token units: {"images": [...], "audio_seconds": Decimal}


@dataclass(slots=True)
class Settlement:
    charge: int = 0  # micro-credits
    balance: int | None = None  # micro-credits after the charge, when known


class BudgetExhausted(Exception):
    def __init__(self, checkout_url: str, mode: str = "error"):
        super().__init__("budget exhausted")
        self.checkout_url = checkout_url
        self.mode = mode


class RateLimited(Exception):
    def __init__(self, retry_after: float, scope: str = "virtual endpoint"):
        super().__init__(f"rate limit of this {scope} reached")
        self.retry_after = retry_after
        self.scope = scope


class Biller(Protocol):
    async def admit(self, ctx: CallContext) -> Admission: ...

    async def settle(self, ctx: CallContext, admission: Admission, outcome: Outcome) -> Settlement: ...

    async def record(self, ctx: CallContext, outcome: Outcome) -> None: ...


class NullBiller:
    """Admits everything and charges nothing: the placeholder until billing is wired in."""

    async def admit(self, ctx: CallContext) -> Admission:
        return Admission()

    async def settle(self, ctx: CallContext, admission: Admission, outcome: Outcome) -> Settlement:
        return Settlement()

    async def record(self, ctx: CallContext, outcome: Outcome) -> None:
        return None


_biller: Biller | None = None


def get_biller() -> Biller:
    """The process's biller: the real one (billing/biller.py) unless a test set another."""
    global _biller
    if _biller is None:
        from billing.biller import install

        _biller = install()
    return _biller


def set_biller(biller: Biller | None) -> None:
    global _biller
    _biller = biller
