"""Trying routes in order until one answers: the fallback loop and the attempt trail.

Falls back on connection errors, connect timeouts, transient statuses (408/409/429/5xx/529),
route faults (upstream 401/403/404: our credential or model name) and malformed
answers. A non-transient UpstreamError is the client's fault: returned as it is, no
fallback. Every attempt goes into outcome.attempts for the request log.

A timeout once the request was sent (no first byte in time, or silence) is different: the
upstream may be working on it and bill it, so it is not sent again elsewhere unless the
logical model opts in (fallback_on_timeout); the call fails with 504, the attempt is
marked "may be billed upstream", and the breaker does not count it as a failure (a slow
answer is not a broken route).
"""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings

from billing.gate import Admission, Outcome
from gateway import errors
from gateway.adapters.base import UpstreamError
from gateway.httpclient import ConnectTimeout
from routing.breaker import breaker
from routing.selection import plan
from routing.snapshot import LogicalModelSnap, PhysicalModelSnap, RouteSnap

log = logging.getLogger(__name__)

CAPACITY_STATUSES = frozenset({429, 503, 529})
alerts = logging.getLogger("tokenbill.alerts")


# Path segments of a provider URL that say nothing about the account (kept in messages).
_GENERIC_SEGMENTS = frozenset({"v1", "v1beta", "v2", "v3", "api", "openai", "deployments", "chat", "completions",
                               "models", "embeddings", "audio", "images", "messages", "responses"})

MAY_BE_BILLED = "may be billed upstream"


def scrub(message: str, target: PhysicalModelSnap) -> str:
    """An upstream's own error text may quote what we sent it: never pass those on. No
    part of the provider's URL reaches an API user: the key, the URL, its host, its path
    (an account or deployment id is often there) and each non-generic path segment."""
    from urllib.parse import urlsplit

    provider = target.provider
    url = urlsplit(provider.base_url or "")
    secrets = [provider.api_key, provider.base_url, url.netloc, url.hostname or "", url.path.rstrip("/"), url.query]
    secrets += [seg for seg in url.path.split("/") if len(seg) >= 3 and seg.lower() not in _GENERIC_SEGMENTS]
    for secret in sorted({s for s in secrets if s and s != "/"}, key=len, reverse=True):
        if secret in message:
            message = message.replace(secret, "***")
    return message


def _attempt(route: RouteSnap, status: int, error: str, started: float) -> dict:
    pm = route.physical_model
    return {
        "physical_model_id": pm.id, "upstream_model": pm.upstream_model, "provider_id": pm.provider.id,
        "provider": pm.provider.name, "status": status, "error": error,
        "latency_ms": int((time.monotonic() - started) * 1000),
    }


def _out_of_quota(target: PhysicalModelSnap) -> None:
    """The operator's alert: the provider account behind this route has no money left."""
    provider = target.provider
    alerts.error("provider out of quota: provider %s (id %s) answered insufficient_quota for %s; its routes "
                 "cool down for %ss, top up the provider account", provider.name, provider.id, target.upstream_model,
                 int(settings.GATEWAY_QUOTA_COOLDOWN))
    try:  # and the merchant: email and alert webhook (billing/alerts.py), off the event loop
        asyncio.get_running_loop().run_in_executor(None, _quota_alert_job, provider.id, target.upstream_model)
    except RuntimeError:  # no running loop (a synchronous caller): the log line above is the alert
        pass


def _quota_alert_job(provider_id: int, upstream_model: str) -> None:
    from django.db import connection

    from billing.alerts import provider_quota_alert

    try:
        provider_quota_alert(provider_id, upstream_model)
    except Exception:  # noqa: BLE001 - an alert must never break a call
        logging.getLogger(__name__).exception("quota alert for provider %s failed", provider_id)
    finally:
        connection.close()


def _cooldown_left(model: LogicalModelSnap) -> float | None:
    now = time.time()
    ends = [breaker.open_until(r.physical_model.id) for r in model.routes if r.weight > 0]
    left = [end - now for end in ends if end > now]
    return min(left) if left and len(left) == len(ends) else None


async def run(model: LogicalModelSnap, admission: Admission, outcome: Outcome, attempt, *, deadline: float):
    """Call `await attempt(route, seconds_left)` on routes in plan order until one returns.
    Raises GatewayError when the client is at fault or every route failed."""
    kinds: list[str] = []
    retry_after = None
    max_attempts = settings.GATEWAY_MAX_ATTEMPTS
    for route in plan(model.routes, breaker.is_open, allowed_route_ids=admission.allowed_route_ids):
        if len(outcome.attempts) >= max_attempts:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            kinds.append("timeout")
            break
        pm = route.physical_model
        started = time.monotonic()
        try:
            result = await attempt(route, remaining)
        except UpstreamError as exc:
            if 300 <= exc.status < 400:  # a redirect is never followed nor relayed: this route failed
                exc = UpstreamError(502, "The upstream model answered with a redirect.", transient=True,
                                    type="api_error", code="upstream_redirect")
            outcome.attempts.append(_attempt(route, exc.status, exc.code or exc.type, started))
            if not exc.transient:
                await breaker.success(pm.id)
                raise errors.GatewayError(exc.status, scrub(exc.message, pm), type=exc.type, code=exc.code,
                                          param=exc.param) from None
            if exc.code == "insufficient_quota":  # every route on that provider account rests longer
                _out_of_quota(pm)
                until = time.time() + settings.GATEWAY_QUOTA_COOLDOWN
                for other in model.routes:
                    if other.physical_model.provider.id == pm.provider.id:
                        await breaker.open(other.physical_model.id, until)
            else:
                await breaker.failure(pm.id, retry_after=exc.retry_after if exc.status == 429 else None)
            if exc.status in CAPACITY_STATUSES:
                kinds.append("unavailable")
                retry_after = max(retry_after or 0.0, exc.retry_after or 0.0) or None
            else:
                kinds.append("bad_answer")
            continue
        except ConnectTimeout:  # never connected: the request did not leave
            outcome.attempts.append(_attempt(route, 0, "connect_timeout", started))
            await breaker.failure(pm.id)
            kinds.append("timeout")
            continue
        except (asyncio.TimeoutError, TimeoutError):
            record = _attempt(route, 0, "timeout", started)
            record["note"] = MAY_BE_BILLED
            outcome.attempts.append(record)
            log.warning("upstream timeout after the request was sent (%s, physical model %s): %s",
                        pm.provider.name, pm.id, MAY_BE_BILLED)
            kinds.append("timeout")
            if model.fallback_on_timeout:
                continue
            raise errors.all_failed("timeout") from None
        except (OSError, ValueError) as exc:  # connection refused or lost, malformed HTTP or JSON
            outcome.attempts.append(_attempt(route, 0, type(exc).__name__, started))
            await breaker.failure(pm.id)
            kinds.append("bad_answer")
            continue
        outcome.attempts.append(_attempt(route, 200, "", started))
        await breaker.success(pm.id)
        outcome.route = route
        return result
    raise _all_failed(model, kinds, retry_after)


def _all_failed(model: LogicalModelSnap, kinds: list[str], retry_after: float | None) -> errors.GatewayError:
    if not kinds:
        return errors.all_failed("unavailable", _cooldown_left(model))
    if all(k == "timeout" for k in kinds):
        return errors.all_failed("timeout")
    if all(k == "unavailable" for k in kinds):
        return errors.all_failed("unavailable", retry_after or _cooldown_left(model))
    return errors.all_failed("bad_answer")
