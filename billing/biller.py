"""The real Biller (billing/gate.py's seam): rate limits, estimate, reserve, price, settle.

admit():  rate limits -> price every route that may serve -> estimate the largest charge
          (prompt tokens + max output tokens at the most expensive route) -> reserve it.
          Less than that but at least the smallest useful call: reserve what is left,
          clamp max_tokens to it, and allow only the routes that amount covers.
settle(): price the actual usage at the route that served -> budget.settle (release the
          hold, add the charge, one atomic step) -> queue the ledger entry (Redis mode)
          and the request log row (both written in batches, off the hot path).

The smallest useful call is the prompt plus MIN_USEFUL_OUTPUT output tokens (or the
requested max if smaller) at the cheapest route; below it the call is refused with a
checkout link before any upstream byte. Embeddings have no output: the prompt alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from redis.exceptions import RedisError

from billing import budget as budgets
from billing import pricing_media
from billing.checkout_links import checkout_url
from billing.gate import CHAT_ENDPOINTS, Admission, BudgetExhausted, CallContext, Outcome, Settlement
from billing.money import MICROS_PER_CREDIT
from billing.pricing import PricingError, RateBook, RouteRates, Units, price_call, route_rates, units_from
from billing.ratelimit import make_limiter
from billing.requestlog import PendingCharge, get_writer

log = logging.getLogger("tokenbill.billing")

MIN_USEFUL_OUTPUT = 16
# Seconds between batches of request-log rows of leased calls: built together, away from
# the answers (at concurrency 1 a row built per reply landed on the next call's path).
RECORD_DELAY = 0.005
RATES_MAX_AGE = 60.0  # seconds; a rate change reloads at once through the config version
ESTIMATE_MARGIN = Decimal("1.05")  # prompt counts are estimates for non-OpenAI tokenizers


class AdmitState:
    __slots__ = ("rates", "prompt_tokens")

    def __init__(self, rates: dict[int, RouteRates], prompt_tokens: int):
        self.rates = rates
        self.prompt_tokens = prompt_tokens


class RealBiller:
    def __init__(self, budget=None, limiter=None, writer=None, rates: RateBook | None = None):
        self.budget = budget or budgets.get_budget()
        self.limiter = limiter or make_limiter()
        self.writer = writer or get_writer()
        self.rates = rates or RateBook(max_age=RATES_MAX_AGE)
        self._rates_version = None
        self._refreshing: asyncio.Task | None = None
        self._rates_cache: dict[tuple, tuple] = {}  # (model, route, markup, rate) -> RouteRates
        self._unrecorded = 0  # leased settles whose row is not queued yet (Redis has not answered)
        self._confirmed: list[tuple] = []  # ... answered, waiting for the next batch (_record_confirmed)
        self._record_timer: asyncio.TimerHandle | None = None
        if hasattr(self.budget, "before_rebuild"):
            # the spool's waits until every process's undrained charges are in the ledger
            self.budget.before_rebuild = getattr(self.writer, "ready_for_rebuild", self.writer.flush)

    # --- admit -------------------------------------------------------------------------

    async def admit(self, ctx: CallContext) -> Admission:
        if ctx.model is None:
            return Admission()
        if ctx.endpoint in pricing_media.MEDIA_ENDPOINTS:
            return await self._admit_media(ctx)
        # The hold is sized from a cheap UPPER bound of the prompt (UTF-8 bytes, see
        # prompt_bound); tiktoken only runs where a real estimate matters: tokens-per-minute
        # limits and a balance too small for the bound (clamping, below).
        prompt = prompt_bound(ctx)
        rates = await self._route_rates(ctx)
        # Per route, the output the hold covers: the client's limit, or with none the physical
        # model's own output cap (its worst case: no limit is sent upstream). n choices: n x that.
        outputs, n = output_bounds(ctx, rates), choices(ctx)
        full = max(r.charge_micros(prompt, outputs[rid] * n) for rid, r in rates.items())
        # The floor the hold must reach: the cheapest route's MIN_USEFUL_OUTPUT tokens with no
        # prompt (a lower bound); _clamped checks the real floor with the tiktoken estimate.
        minimum = min(r.charge_micros(0, min(outputs[rid], MIN_USEFUL_OUTPUT) * n) for rid, r in rates.items())
        limit_tokens = self._limit_tokens(ctx)
        if full == 0:  # a model priced at zero on purpose: nothing to hold
            if limit_tokens is not None:
                await self.limiter.check(ctx.ve, ctx.key, limit_tokens)
            return Admission(0, None, None if len(rates) == len(ctx.model.routes) else frozenset(rates),
                             AdmitState(rates, prompt))
        reserved = await self._hold(ctx, full, max(minimum, 1), limit_tokens)
        if reserved <= 0:
            raise exhausted(ctx)
        if reserved >= full:  # the worst case is paid for: no output limit is added upstream
            allowed = None if len(rates) == len(ctx.model.routes) else frozenset(rates)
            return Admission(reserved, None, allowed, AdmitState(rates, prompt))
        prompt = prompt_tokens(ctx)  # the balance is short of the bound: clamp with the real estimate
        return await self._clamped(ctx, reserved, prompt, outputs, n, AdmitState(rates, prompt))

    async def _hold(self, ctx: CallContext, full: int, minimum: int, limit_tokens: int | None) -> int:
        """Reserve; for a VE with rate limits (`limit_tokens` not None), check them at the
        same time: both scripts leave in one write and come back together, one Redis round
        trip instead of two. A limit that refuses the call releases what was reserved."""
        if limit_tokens is None:
            return await self._reserve(ctx, full, minimum)
        if self.budget.name != "redis":  # in-process limits cost nothing: check, then hold
            await self.limiter.check(ctx.ve, ctx.key, limit_tokens)
            return await self._reserve(ctx, full, minimum)
        hold = asyncio.ensure_future(self._reserve(ctx, full, minimum))
        try:
            checked, reserved = await asyncio.gather(self.limiter.check(ctx.ve, ctx.key, limit_tokens),
                                                     asyncio.shield(hold), return_exceptions=True)
        except asyncio.CancelledError:  # the client left mid-admission: no settle will come
            hold.add_done_callback(lambda t: self._release_if_held(ctx, t))
            raise
        if isinstance(checked, BaseException):
            if isinstance(reserved, int) and reserved > 0:
                await self._release(ctx)
            if isinstance(checked, (OSError, RedisError)):  # limits unknown: refuse (503), never unlimited
                log.error("rate limiter unavailable (%s): refusing request %s", type(checked).__name__,
                          ctx.request_id)
                raise unavailable() from None
            raise checked
        if isinstance(reserved, BaseException):
            raise reserved
        return reserved

    async def _reserve(self, ctx: CallContext, full: int, minimum: int) -> int:
        try:
            return await self.budget.reserve(request_id=ctx.request_id, ve_id=ctx.ve.id, key_id=ctx.key.id,
                                             full=full, minimum=minimum, **self._limit(ctx))
        except (OSError, RedisError) as exc:
            # No budget, no call: refusing is the only answer that cannot overspend.
            log.error("budget unavailable (%s): refusing request %s", type(exc).__name__, ctx.request_id)
            raise unavailable() from None

    def _release_if_held(self, ctx: CallContext, hold: asyncio.Future) -> None:
        if not hold.cancelled() and hold.exception() is None and hold.result() > 0:
            _background(self._release(ctx), "release of an abandoned hold")

    async def _release(self, ctx: CallContext) -> None:
        await self.budget.settle(request_id=ctx.request_id, ve_id=ctx.ve.id, key_id=ctx.key.id, charge=0,
                                 entry=budgets.ChargeEntry(ctx.request_id), **self._limit(ctx))

    def _limit_tokens(self, ctx: CallContext) -> int | None:
        """Tokens the rate limiter counts at admission; None when the VE has no limits."""
        if ctx.ve.tokens_per_minute is not None:
            return prompt_tokens(ctx)
        return 0 if ctx.ve.requests_per_minute is not None else None

    async def _clamped(self, ctx, reserved, prompt, outputs, n, state) -> Admission:
        """Less than the full estimate is held: keep the routes it pays for, cap the output.
        Admission.max_tokens is then the least any kept route affords; a route whose own
        output cap is within it needs no limit (gateway/proxy.py upstream_body)."""
        affordable = {rid: _affordable_output(r, reserved, prompt, outputs[rid] * n) // n
                      for rid, r in state.rates.items()}
        allowed = {rid: k for rid, k in affordable.items() if k >= min(outputs[rid], MIN_USEFUL_OUTPUT)}
        if not allowed:
            await self._release(ctx)
            raise exhausted(ctx)
        return Admission(reserved, min(allowed.values()), frozenset(allowed), state)

    async def _admit_media(self, ctx: CallContext) -> Admission:
        """Images, speech, transcription: hold the units the gateway computed
        (billing/pricing_media.py), all or nothing (no clamping: an image or a second of
        audio cannot be cut short to fit), at the most expensive route that can price them."""
        limited = ctx.ve.requests_per_minute is not None or ctx.ve.tokens_per_minute is not None
        limit_tokens = 0 if limited else None  # media calls count as requests, not tokens
        units = pricing_media.reservation_units(ctx)
        try:
            rates = pricing_media.priceable(ctx.model.name, await self._route_rates(ctx), units)
        except PricingError as exc:
            raise not_priced(exc) from None
        full = max(_micros(r.charge_exact(units)) for r in rates.values())
        allowed = None if len(rates) == len(ctx.model.routes) else frozenset(rates)
        if full == 0:
            if limited:
                await self.limiter.check(ctx.ve, ctx.key, 0)
            return Admission(0, None, allowed, AdmitState(rates, 0))
        reserved = await self._hold(ctx, full, full, limit_tokens)
        if reserved <= 0:
            raise exhausted(ctx)
        return Admission(reserved, None, allowed, AdmitState(rates, 0))

    async def _route_rates(self, ctx: CallContext) -> dict[int, RouteRates]:
        # Rates are configuration: a new one announces itself with config_changed() (billing/
        # rates.py), which moves the routing snapshot's version. Reload when that moves, and
        # otherwise at most every RATES_MAX_AGE seconds as a safety net: no SQL per call, nor
        # every second (the rows carry their effective_from; the lookup picks by time).
        version = _config_version()
        if not self.rates.loaded:
            self._rates_version = version
            await sync_to_async(self.rates.refresh)()
        elif version != self._rates_version or self.rates.stale():
            self._rates_version = version
            self._refresh_rates_later()
        markup = ctx.ve.organization.markup
        result, errors = {}, []
        cache = self._rates_cache
        if len(cache) > 4096:
            cache.clear()
        for route in ctx.model.routes:
            rate = self.rates.rate(ctx.ve.organization.id, route.physical_model.provider.currency)
            # Keyed by the snapshot objects themselves (a config change builds new ones) and
            # the rate and markup in force; the entry holds them, so an id is never reused.
            ck = (id(ctx.model), id(route), markup, rate)
            hit = cache.get(ck)
            if hit is not None and hit[0] is ctx.model and hit[1] is route:
                result[route.id] = hit[2]
                continue
            try:
                result[route.id] = route_rates(ctx.model, route, markup, rate)
                cache[ck] = (ctx.model, route, result[route.id])
            except PricingError as exc:
                errors.append(exc)
        if not result:
            raise not_priced(errors[0] if errors else PricingError(f"Model '{ctx.model.name}' has no route."))
        return result

    def _refresh_rates_later(self) -> None:
        """Reload rates in the background; calls meanwhile use the book they have."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_rates())

    async def _refresh_rates(self) -> None:
        try:
            await sync_to_async(self.rates.refresh)()
        except Exception:
            log.exception("exchange rates not reloaded; keeping the ones in memory")

    def _limit(self, ctx) -> dict:
        return {"key_limit": ctx.key.credit_limit} if self.budget.name == "redis" else {}

    # --- settle ------------------------------------------------------------------------

    async def settle(self, ctx: CallContext, admission: Admission, outcome: Outcome) -> Settlement:
        priced = self._price(ctx, admission, outcome)
        charge = priced.charge if priced else 0
        snapshot = dict(priced.snapshot) if priced else {}
        kwargs = self._limit(ctx)
        if self.budget.name == "redis":
            def confirmed(charged: int) -> None:  # a leased call: what Redis confirms it took
                self._confirmed.append((ctx, admission, outcome, priced, snapshot, charge, charged))
                if self._record_timer is None:
                    self._record_timer = asyncio.get_running_loop().call_later(RECORD_DELAY, self._record_confirmed)

            kwargs["on_confirmed"] = confirmed
        settled = await self.budget.settle(
            request_id=ctx.request_id, ve_id=ctx.ve.id, key_id=ctx.key.id, charge=charge,
            entry=budgets.ChargeEntry(ctx.request_id, rate_snapshot=snapshot), **kwargs)
        if priced and priced.units.output and ctx.ve.tokens_per_minute is not None:
            # Counted without holding up the answer: the command leaves before the next
            # call's check on the same connection, so Redis applies it first.
            _background(self.limiter.add_tokens(ctx.ve, ctx.key, priced.units.output), "rate limit tokens")
        if settled.deferred:  # the row and ledger entry are queued when Redis answers
            self._unrecorded += 1
        else:
            self._record(ctx, admission, outcome, priced, snapshot, charge, settled.charged, settled.posted)
        return Settlement(charge=settled.charged, balance=settled.balance)

    def _record_confirmed(self) -> None:
        """The rows of the leased calls Redis confirmed in the last RECORD_DELAY, in one go."""
        self._record_timer = None
        batch, self._confirmed = self._confirmed, []
        for ctx, admission, outcome, priced, snapshot, charge, charged in batch:
            self._unrecorded -= 1
            try:
                self._record(ctx, admission, outcome, priced, snapshot, charge, charged, False)
            except Exception:  # one bad row must not lose the others
                log.exception("request %s: request-log row not queued", ctx.request_id)

    def _record(self, ctx, admission, outcome, priced, snapshot: dict, charge: int, charged: int, posted: bool):
        """Queue the request-log row and, unless the budget wrote it, the ledger entry."""
        if charged != charge:
            snapshot["uncollected"] = charge - charged  # usage above the hold, balance could not pay
            log.warning("request %s: charge capped at %s of %s", ctx.request_id, charged, charge)
        pending = None
        if charged and not posted:
            pending = PendingCharge(ctx.ve.id, ctx.key.id, charged, ctx.request_id, snapshot)
        self.writer.add(row=log_row(ctx, outcome, priced, charged, snapshot, admission.reserved), charge=pending)

    def _price(self, ctx, admission, outcome):
        if outcome.route is None or ctx.model is None:
            return None  # failed everywhere (or refused): charged nothing
        units = units_from(outcome.usage, outcome.units)
        state = admission.handle if isinstance(admission.handle, AdmitState) else None
        rates = state.rates.get(outcome.route.id) if state else None
        if rates is None:
            rate = self.rates.rate(ctx.ve.organization.id, outcome.route.physical_model.provider.currency)
            rates = route_rates(ctx.model, outcome.route, ctx.ve.organization.markup, rate)
        return price_call(rates, units)

    async def record(self, ctx: CallContext, outcome: Outcome) -> None:
        self.writer.add(row=log_row(ctx, outcome, None, 0, {}, 0))

    async def flush(self, timeout: float = 10.0) -> int:
        """Every call settled so far into the request log and ledger (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._unrecorded and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        return await self.writer.flush()

    def flush_sync(self, timeout: float = 10.0) -> int:
        """flush() from a thread other than the gateway's loop (tests)."""
        deadline = time.monotonic() + timeout
        while self._unrecorded and time.monotonic() < deadline:
            time.sleep(0.001)  # the loop's thread queues them as Redis answers
        return self.writer.flush_sync()

    async def close(self) -> None:
        release = getattr(self.budget, "release_leases", None)
        if release is not None:
            try:
                await release()  # leases back to their VEs, settles answered: then the rows are all queued
            except Exception:
                log.exception("credit leases not returned; the expired-holds sweep will")
        await self.flush()


# --- helpers ----------------------------------------------------------------------------

_background_tasks: set = set()


def _background(coroutine, what: str) -> None:
    """Run a side step of settle on the loop without awaiting it; its failure is logged."""
    task = asyncio.ensure_future(coroutine)
    _background_tasks.add(task)  # a strong reference until done (the loop keeps only weak ones)

    def done(t: asyncio.Task) -> None:
        _background_tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("%s not recorded (%s)", what, type(t.exception()).__name__)

    task.add_done_callback(done)

_routing_cache = None


def _config_version():
    global _routing_cache
    if _routing_cache is None:
        from routing.cache import routing_cache

        _routing_cache = routing_cache
    snapshot = _routing_cache.snapshot
    return snapshot.version if snapshot is not None else None


def _micros(credits: Decimal) -> int:
    from billing.money import to_micros

    return to_micros(credits)


def _affordable_output(rates: RouteRates, reserved: int, prompt: int, output: int) -> int:
    """Most output tokens whose charge, with the prompt, stays within `reserved` micro-credits."""
    left = Decimal(reserved) / MICROS_PER_CREDIT - rates.charge_exact(Units(input=prompt))
    per_token = rates.charge_per["output"]
    if left < 0:
        return -1
    if not per_token:
        return output
    return min(output, int(left / per_token))


_tokens_module = None


def _tokens():
    """gateway/tokens.py, imported on first use (billing does not import the gateway at load)."""
    global _tokens_module
    if _tokens_module is None:
        from gateway import tokens

        _tokens_module = tokens
    return _tokens_module


def prompt_bound(ctx: CallContext) -> int:
    """An upper bound of the prompt's tokens, for sizing the hold, without a tokenizer.

    Every tokenizer we bill for (tiktoken's byte-level BPE, Anthropic's, SentencePiece with
    byte fallback) emits tokens of at least one byte, so a text's UTF-8 length bounds its
    token count from above. Message framing is counted like gateway/tokens.py (3 per
    message, 3 priming, 1 per name) and images at that module's fixed estimate. The bound is
    ~4x the real count for English: a hold is a little larger, never too small; the charge
    is priced from the reported usage. Measured: ~3 us vs ~80 us per call for tiktoken.
    """
    tokens = _tokens()
    body = ctx.body
    if "messages" in body:
        total = tokens.REPLY_PRIMING_TOKENS
        for message in body.get("messages") or ():
            if not isinstance(message, dict):
                continue
            total += tokens.TOKENS_PER_MESSAGE + _nbytes(message.get("role"))
            if message.get("name"):
                total += tokens.TOKENS_PER_NAME + _nbytes(message["name"])
            total += _content_bound(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {} if isinstance(call, dict) else {}
                total += _nbytes(function.get("name")) + _nbytes(function.get("arguments"))
        return total
    return _content_bound(body.get("input"))


def _nbytes(text) -> int:
    if text is None:
        return 0
    if not isinstance(text, str):
        text = str(text)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _content_bound(content) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _nbytes(content)
    if isinstance(content, int):
        return 1
    total = 0
    for part in content if isinstance(content, list) else ():
        if isinstance(part, (str, int, list)):
            total += _content_bound(part)
        elif not isinstance(part, dict):
            continue
        elif part.get("type") == "text":
            total += _nbytes(part.get("text") or "")
        elif part.get("type") == "image_url":
            tokens = _tokens()
            detail = (part.get("image_url") or {}).get("detail") if isinstance(part.get("image_url"), dict) else None
            total += tokens.IMAGE_TOKENS_LOW if detail == "low" else tokens.IMAGE_TOKENS_HIGH
        else:  # a part type we do not know: its whole JSON bounds it
            total += _nbytes(json.dumps(part))
    return total


def prompt_tokens(ctx: CallContext) -> int:
    body = ctx.body
    try:
        from gateway import tokens

        name = ctx.model.routes[0].physical_model.upstream_model if ctx.model and ctx.model.routes else None
        if "messages" in body:
            count = tokens.count_messages(body.get("messages") or [], name)
        else:
            count = tokens.count_content(body.get("input") or "", name) if isinstance(body.get("input"), str) else \
                sum(tokens.count_content(x, name) if isinstance(x, str) else len(x) for x in body.get("input") or [])
    except Exception:  # no tokenizer: a generous count (about 3 bytes per token)
        count = len(json.dumps(body.get("messages") or body.get("input") or "")) // 3 + 1
    return int((Decimal(count) * ESTIMATE_MARGIN).to_integral_value(rounding="ROUND_CEILING"))


def choices(ctx: CallContext) -> int:
    n = ctx.body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def requested_output(ctx: CallContext) -> int | None:
    """The client's output limit; None when it names none (then none is sent upstream
    unless the balance requires one); 0 for calls without output (embeddings)."""
    if ctx.endpoint not in CHAT_ENDPOINTS:
        return 0
    for name in ("max_completion_tokens", "max_tokens"):
        value = ctx.body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def output_bounds(ctx: CallContext, rates: dict) -> dict[int, int]:
    """Route id -> the most output tokens (per choice) a call may write there."""
    requested = requested_output(ctx)
    if requested is not None:
        return dict.fromkeys(rates, requested)
    return {route.id: route.physical_model.max_output_tokens for route in ctx.model.routes if route.id in rates}


def exhausted(ctx: CallContext) -> BudgetExhausted:
    exc = BudgetExhausted(checkout_url(ctx.ve.public_id), mode=ctx.ve.exhaustion_mode)
    from gateway.magic import exhausted_text  # the kind wording of the "message" mode

    exc.message = exhausted_text(ctx.ve, exc.checkout_url)
    return exc


def unavailable() -> Exception:
    from gateway.errors import GatewayError

    return GatewayError(503, "Billing is unavailable right now; no credits were used. Try again shortly.",
                        type="api_error", code="billing_unavailable")


def not_priced(exc: PricingError) -> Exception:
    try:  # the gateway renders its own error type; billing does not depend on it otherwise
        from gateway.errors import GatewayError
    except ImportError:  # pragma: no cover
        return exc
    return GatewayError(400, str(exc), type="invalid_request_error", code=PricingError.code, param="model")


def log_row(ctx: CallContext, outcome: Outcome, priced, charged: int, snapshot: dict, reserved: int) -> dict:
    route = outcome.route
    pm = route.physical_model if route else None
    units = priced.units if priced else units_from(outcome.usage, outcome.units)
    snapshot = dict(snapshot, reserved=reserved) if priced else snapshot
    return {
        "request_id": ctx.request_id, "organization_id": ctx.ve.organization.id, "virtual_endpoint_id": ctx.ve.id,
        "access_key_id": ctx.key.id if ctx.key else None, "run_id": ctx.run_id or "", "endpoint": ctx.endpoint,
        "logical_model_name": ctx.requested_model or (ctx.model.name if ctx.model else ""),
        "logical_model_id": ctx.model.id if ctx.model else None, "physical_model_id": pm.id if pm else None,
        "provider_id": pm.provider.id if pm else None, "stream": ctx.stream, "status": _status(outcome),
        "http_status": outcome.http_status, "error_code": outcome.error_code or "", "attempts": outcome.attempts,
        "input_tokens": units.input, "cached_input_tokens": units.cached_input,
        "cache_creation_tokens": units.cache_creation, "output_tokens": units.output,
        "images": sum(int(i.get("n", 1)) for i in units.images) if units.images else 0,
        "audio_seconds": units.audio_seconds, "usage_estimated": units.estimated,
        "cost": priced.cost if priced else Decimal(0), "cost_currency": priced.cost_currency if priced else "",
        "cost_credits": priced.cost_credits if priced else 0, "charge": charged, "price_snapshot": snapshot,
        "client_disconnected": outcome.client_disconnected,
        "started_at": datetime.fromtimestamp(ctx.started_at or 0, tz=UTC), "latency_ms": max(outcome.latency_ms, 0),
        "ttfb_ms": outcome.ttfb_ms, "reasoning_tokens": max(int(getattr(outcome.usage, "reasoning_tokens", 0) or 0), 0),
    }


def _status(outcome: Outcome) -> str:
    if outcome.client_disconnected:
        return "disconnected"
    return outcome.status or "ok"


def install() -> RealBiller:
    """Install the real biller for this process (billing.gate.get_biller calls it)."""
    from billing import gate
    from billing.ledger import on_posted

    biller = RealBiller()
    if biller.budget.name == "redis":
        on_posted(biller.budget.grant_applied)
    gate.set_biller(biller)
    return biller


async def shutdown() -> None:
    """Flush what is buffered (the gateway's lifespan shutdown should await this)."""
    from billing import gate

    biller = gate._biller
    if isinstance(biller, RealBiller):
        await biller.close()
