"""One metered call: admit, route with fallback, relay, settle.

    admission = await biller.admit(ctx)          # before any upstream byte
    ... fallback.run(...) -> answer or stream ...
    await biller.settle(ctx, admission, outcome) # exactly once, shielded, in a finally

Streams: response headers go out only once the first upstream chunk decoded cleanly,
so every failure before that can still fall back. After it, a failure ends the stream
with an OpenAI streaming error event (never another model's output spliced in). A
client disconnect cancels the relay (and so the upstream request) and is settled with
the usage counted so far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from billing.money import format_credits
from billing.gate import CHAT_ENDPOINTS, Admission, BudgetExhausted, CallContext, Outcome, RateLimited, get_biller
from gateway import errors, fallback, upstream
from gateway.adapters.shapes import content_text
from gateway.adapters import params
from gateway.adapters.base import REGISTRY, UpstreamError, Usage
from gateway.responses import DONE, send_assistant_message, send_json, sse_chunk, start_sse
from routing.snapshot import RouteSnap

log = logging.getLogger(__name__)


class ClientGone(Exception):
    pass


async def read_body(receive, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it passes `limit` bytes."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone()
    body = message.get("body", b"")
    if message.get("more_body"):  # the common one-message body skips the join
        parts, size = [body], len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise errors.too_large(limit)
            parts.append(chunk)
        body = b"".join(parts)
    if len(body) > limit:
        raise errors.too_large(limit)
    return body


# --- usage when the upstream reports none ---------------------------------------------------
def estimate_usage(body: dict, output_text: str, model: str) -> Usage:
    try:
        from gateway import tokens

        prompt = tokens.count_messages(body.get("messages") or [], model) if "messages" in body else \
            tokens.count_content(body.get("input") or "", model)
        output = tokens.count_text(output_text, model) if output_text else 0
    except Exception:  # a counting failure must not lose the charge: fall back to a coarse count
        prompt = len(json.dumps(body.get("messages") or body.get("input") or "")) // 4
        output = len(output_text) // 4
    return Usage(input_tokens=prompt, output_tokens=output, estimated=True)


def plausible_usage(usage: Usage | None, body: dict, output_text: str, model: str) -> Usage:
    """What a completed answer is charged: the upstream's usage, unless it is unknown or
    says no output for an answer with content (0/0, a total only): then the estimate,
    flagged (never less input than the upstream reported). An answer that produced nothing
    keeps what the upstream said (an in-stream error or a refusal before output: free)."""
    if usage is not None and (usage.output_tokens > 0 or not output_text):
        return usage
    estimate = estimate_usage(body, output_text, model)
    if usage is not None:
        estimate.input_tokens = max(estimate.input_tokens, usage.input_tokens)
    return estimate


def _stream_usage(ctx: CallContext, dec) -> Usage:
    """A stream's usage, defensively: a decoder that cannot give it (a tokenizer error, a
    content part it did not expect) still leaves an estimate, never an unsettled call."""
    try:
        return plausible_usage(dec.usage, ctx.body, dec.text, dec.target.upstream_model)
    except Exception:
        log.exception("request %s: stream usage unreadable; estimated from the prompt", ctx.request_id)
        try:
            text = "".join(p for p in dec.text_parts if isinstance(p, str))
        except Exception:
            text = ""
        return estimate_usage(ctx.body, text, getattr(dec.target, "upstream_model", ""))


def upstream_body(body: dict, route: RouteSnap, admission: Admission) -> dict:
    """The client's body for this route. No output limit is added unless the balance needs
    one (admission.max_tokens below the limit asked for, or below the model's own cap when
    none was); a limit goes in the parameter this physical model takes (routing/output_limits.py:
    max_completion_tokens for OpenAI reasoning models, which refuse max_tokens)."""
    pm = route.physical_model
    out = dict(body)
    out["model"] = pm.upstream_model
    asked = out.get("max_completion_tokens")
    if not isinstance(asked, int) or isinstance(asked, bool):
        asked = out.get("max_tokens")
        asked = asked if isinstance(asked, int) and not isinstance(asked, bool) else None
    cap = admission.max_tokens
    limit = asked if cap is None or cap >= (asked or pm.max_output_tokens) else cap
    if pm.limit_parameter == "max_completion_tokens":
        if "max_tokens" in out:  # a reasoning model refuses it: the same limit, spelled its way
            del out["max_tokens"]
        if limit is not None:
            out["max_completion_tokens"] = limit
    elif limit is not None and limit != asked:
        out["max_completion_tokens" if "max_completion_tokens" in out else "max_tokens"] = limit
    return out


def dropped_header(dropped) -> list[tuple[bytes, bytes]]:
    """Parameters the serving provider could not take, dropped by the logical model's policy."""
    return [(b"x-tokenbill-dropped-params", ",".join(dropped).encode())] if dropped else []


def settlement_headers(settlement) -> list[tuple[bytes, bytes]]:
    if settlement is None:
        return []
    # Decimal-string credits, like the management API (the Settlement holds micro-credits).
    headers = [(b"x-tokenbill-charge", format_credits(settlement.charge).encode())]
    if settlement.balance is not None:
        headers.append((b"x-tokenbill-balance", format_credits(settlement.balance).encode()))
    return headers


# --- admission -------------------------------------------------------------------------------
async def admit(ctx: CallContext, send) -> Admission | None:
    """Admission, or None when the call was answered already (budget message mode)."""
    biller = get_biller()
    try:
        return await biller.admit(ctx)
    except BudgetExhausted as exc:
        await biller.record(ctx, Outcome(route=None, status="budget_exhausted", http_status=429,
                                         error_code="budget_exhausted"))
        text = f"Your Credit balance is insufficient. Please top up: {exc.checkout_url}"
        if exc.mode == "message" and ctx.endpoint in CHAT_ENDPOINTS:
            await send_assistant_message(send, request_id=ctx.request_id, model=ctx.requested_model,
                                         text=getattr(exc, "message", None) or text, stream=ctx.stream)
            return None
        raise errors.GatewayError(429, text, type="insufficient_quota", code="budget_exhausted",
                                  headers=[(b"x-should-retry", b"false")],
                                  extra={"checkout_url": exc.checkout_url}) from None
    except RateLimited as exc:
        await biller.record(ctx, Outcome(route=None, status="rate_limited", http_status=429,
                                         error_code="rate_limit_exceeded"))
        raise errors.GatewayError(429, f"Rate limit of this {exc.scope} reached. Try again later.",
                                  type="rate_limit_error", code="rate_limit_exceeded",
                                  headers=errors.retry_after_header(exc.retry_after)) from None


async def settle(ctx: CallContext, admission: Admission, outcome: Outcome):
    outcome.latency_ms = int((time.time() - ctx.started_at) * 1000)
    try:
        # Shielded: a cancelled request (client gone) must still release its reservation.
        return await asyncio.shield(get_biller().settle(ctx, admission, outcome))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("gateway: settle failed for request %s", ctx.request_id)
        return None


def _fail(outcome: Outcome, exc: errors.GatewayError) -> None:
    outcome.http_status = exc.status
    outcome.status = "client_error" if exc.status < 500 else "upstream_error"
    outcome.error_code = exc.code or exc.type


# --- non-stream (chat and embeddings) ------------------------------------------------------
async def unary(ctx: CallContext, send, *, deadline: float) -> None:
    admission = await admit(ctx, send)
    if admission is None:
        return
    outcome = Outcome(route=None)
    settlement = None
    answer = None
    attempt = _unary_attempt(ctx, admission)
    try:
        answer = await fallback.run(ctx.model, admission, outcome, attempt, deadline=deadline)
    except errors.GatewayError as exc:
        _fail(outcome, exc)
        raise
    finally:
        if answer is not None:
            payload, usage = answer
            outcome.usage = usage
            outcome.ttfb_ms = int((time.time() - ctx.started_at) * 1000)
        settlement = await settle(ctx, admission, outcome)
    payload["model"] = ctx.requested_model
    if settlement is not None and isinstance(payload.get("usage"), dict):
        payload["usage"]["cost"] = format_credits(settlement.charge)  # as OpenRouter; decimal-string credits
    await send_json(send, 200, json.dumps(payload).encode(), ctx.request_id,
                    settlement_headers(settlement) + dropped_header(attempt.dropped))


def _unary_attempt(ctx: CallContext, admission: Admission):
    embeddings = ctx.endpoint == "embeddings"

    async def attempt(route: RouteSnap, remaining: float):
        pm = route.physical_model
        adapter = REGISTRY[pm.provider.kind]
        if embeddings:
            body = {**ctx.body, "model": pm.upstream_model}
        else:
            body, attempt.dropped = params.apply_policy(pm.provider.kind, upstream_body(ctx.body, route, admission),
                                                        ctx.model.unsupported_params)
        call = adapter.embeddings_request(pm, body) if embeddings else adapter.chat_request(pm, body, stream=False)
        resp = await upstream.send(call, pm.provider, remaining)
        async with resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise adapter.error_from(resp.status, raw, resp.headers)
        try:
            payload = json.loads(raw)
        except ValueError:
            raise UpstreamError(502, "The upstream model returned invalid JSON.", transient=True,
                                code="bad_upstream_answer") from None
        if embeddings:
            payload, usage = adapter.embeddings_response(pm, payload)
        else:
            payload, usage = adapter.chat_response(pm, payload)
        if usage is None or not embeddings:
            usage = plausible_usage(usage, ctx.body, "" if embeddings else _answer_text(payload), pm.upstream_model)
        return payload, usage

    attempt.dropped = []  # the serving route's dropped parameters (x-tokenbill-dropped-params)
    return attempt


def _answer_text(payload: dict) -> str:
    parts = []
    for choice in payload.get("choices") or ():
        parts.append(content_text((choice.get("message") or {}).get("content")))
    return "".join(parts)


# --- stream ----------------------------------------------------------------------------------
class _Opened:
    __slots__ = ("resp", "decoder", "events", "first", "pending", "dropped")

    def __init__(self, resp, decoder, events, first, pending=(), dropped=()):
        self.resp, self.decoder, self.events, self.first, self.pending = resp, decoder, events, first, pending
        self.dropped = dropped


def _stream_attempt(ctx: CallContext, admission: Admission, include_usage: bool):
    async def attempt(route: RouteSnap, remaining: float) -> _Opened:
        pm = route.physical_model
        adapter = REGISTRY[pm.provider.kind]
        body, dropped = params.apply_policy(pm.provider.kind, upstream_body(ctx.body, route, admission),
                                            ctx.model.unsupported_params)
        call = adapter.chat_request(pm, body, stream=True)
        resp = await upstream.send(call, pm.provider, remaining)
        try:
            if resp.status >= 300:
                raise adapter.error_from(resp.status, await resp.read(), resp.headers)
            decoder = adapter.stream_decoder(pm, include_usage)
            batches = upstream.sse_batches(resp)
            async for batch in batches:
                for i, event in enumerate(batch):
                    first = decoder.feed(event)
                    if first or decoder.done:
                        # The first chunk goes out at once; what arrived with it is relayed next
                        # (a failure there is then after the first byte: an error event).
                        return _Opened(resp, decoder, batches, first, batch[i + 1:], dropped)
            first = decoder.close()
            if not first:
                raise UpstreamError(502, "The upstream model sent an empty stream.", transient=True,
                                    code="bad_upstream_answer")
            return _Opened(resp, decoder, None, first, (), dropped)
        except BaseException:
            resp.close()
            raise

    return attempt


async def stream(ctx: CallContext, receive, send, *, deadline: float) -> None:
    admission = await admit(ctx, send)
    if admission is None:
        return
    options = ctx.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    outcome = Outcome(route=None)
    opened = None
    settled: list = []  # not empty once settle has started: it runs exactly once

    async def finish():
        """Settle (once): before `data: [DONE]` on a stream that ended normally, so the
        charge can go out in an SSE comment; else in the finally below (errors, client gone)."""
        if settled:
            return settled[0]
        settled.append(None)
        try:
            if opened is not None:
                dec = opened.decoder
                # A cut stream (client gone, upstream failed) is charged for what was generated.
                outcome.usage = _stream_usage(ctx, dec)
                if dec.done and not outcome.client_disconnected:
                    opened.resp.release()  # the end was seen: its last bytes may keep the connection
                else:
                    opened.resp.close()  # cut short: closing tells the upstream to stop generating
        finally:  # whatever failed above, the hold is settled (never left to the sweep)
            settled[0] = await settle(ctx, admission, outcome)
        return settled[0]

    # Watched from the start: a client that leaves while the upstream is still thinking
    # (minutes before a reasoning model's first token) cancels the upstream call there too.
    gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(receive, asyncio.current_task(), gone))
    try:
        try:
            opened = await fallback.run(ctx.model, admission, outcome, _stream_attempt(ctx, admission, include_usage),
                                        deadline=deadline)
        except errors.GatewayError as exc:
            _fail(outcome, exc)
            raise
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            asyncio.current_task().uncancel()  # the client left before the first byte: nothing to send
            outcome.client_disconnected = True
            outcome.status = "disconnected"
            return
        outcome.ttfb_ms = int((time.time() - ctx.started_at) * 1000)
        await _relay(ctx, send, opened, outcome, finish, gone)
    finally:
        watcher.cancel()
        if not settled:
            await finish()


def settlement_comment(settlement) -> bytes:
    """The charge of a stream, known only at its end: an SSE comment line (SDKs skip
    comments) sent just before `data: [DONE]`. Amounts in credits, like the spec's headers."""
    if settlement is None:
        return b""
    text = f": x-tokenbill-charge={format_credits(settlement.charge)}"
    if settlement.balance is not None:
        text += f" x-tokenbill-balance={format_credits(settlement.balance)}"
    return text.encode() + b"\n\n"


async def _relay(ctx: CallContext, send, opened: _Opened, outcome: Outcome, finish, gone: asyncio.Event) -> None:
    relay = asyncio.current_task()
    model = ctx.requested_model
    try:
        await start_sse(send, ctx.request_id, dropped_header(opened.dropped))
        await send({"type": "http.response.body", "body": _frames(opened.first, model), "more_body": True})
        decoder = opened.decoder
        if opened.pending and not decoder.done:
            await _relay_batch(send, decoder, opened.pending, model)
        if opened.events is not None and not decoder.done:
            async for batch in opened.events:
                await _relay_batch(send, decoder, batch, model)
                if decoder.done:
                    break
        tail = opened.decoder.close()
        settlement = await finish()
        await send({"type": "http.response.body", "body": _frames(tail, model) + settlement_comment(settlement) + DONE})
    except asyncio.CancelledError:
        if not gone.is_set():
            raise
        relay.uncancel()
        outcome.client_disconnected = True
        outcome.status = "disconnected"
    except Exception as exc:  # after the first byte: end the stream with an error event, no fallback
        if gone.is_set():
            outcome.client_disconnected = True
            outcome.status = "disconnected"
            return
        outcome.status = "upstream_error"
        outcome.error_code = "stream_interrupted"
        if not isinstance(exc, (UpstreamError, OSError, asyncio.TimeoutError)):
            log.exception("gateway: unexpected error while relaying a stream")
        error = errors.GatewayError(502, "The upstream model failed while streaming.", type="api_error",
                                    code="stream_interrupted")
        try:
            await send({"type": "http.response.body", "body": errors.stream_error_event(error)})
        except Exception:
            pass


async def _relay_batch(send, decoder, batch, model: str) -> None:
    """Relay events that arrived together in one send; chunks decoded before a failure in
    the batch still reach the client before the error event."""
    chunks: list[dict] = []
    try:
        for event in batch:
            chunks += decoder.feed(event)
            if decoder.done:
                break
    finally:
        if chunks:
            await send({"type": "http.response.body", "body": _frames(chunks, model), "more_body": True})


async def _watch_disconnect(receive, relay: asyncio.Task, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            relay.cancel()  # stops the relay and, by closing the response, the upstream call
            return


def _frames(chunks: list[dict], model: str) -> bytes:
    if not chunks:
        return b""
    out = []
    for chunk in chunks:
        if "model" in chunk:
            chunk["model"] = model
        out.append(sse_chunk(chunk))
    return b"".join(out)
