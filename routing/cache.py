"""The gateway's in-process routing cache (L1) and how it learns about changes.

`routing_cache.snapshot` is one immutable routing.snapshot.Snapshot built from SQL
(provider keys decrypted once, here). Every gateway call reads only that object: in the
steady state a call runs zero SQL queries.

Invalidation, within a second across processes:
- routing.services.config_changed() bumps the ConfigVersion row and, after commit, runs
  our listener, which marks this process dirty and (with REDIS_URL) INCRs a Redis
  version key that every process reads.
- A background asyncio task per process (started by `ensure_started()`, from the ASGI
  lifespan or the first call) wakes every GATEWAY_CONFIG_POLL_SECONDS (at most 0.5 s
  with Redis): it compares the Redis version key, or without Redis the ConfigVersion
  row, and rebuilds the snapshot in a worker thread when it moved. The same task pulls
  shared breaker state and flushes key last-used times (batched, never per call).

SQL always runs in a dedicated one-thread executor ("tb-routing-cache"), never on the
request path; that thread closes its connection after every job so a test database can
be dropped and Postgres connections are not pinned.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.utils import timezone

from routing import output_limits
from routing.breaker import breaker
from routing.snapshot import (
    AccessKeySnap,
    LogicalModelSnap,
    OrganizationSnap,
    PhysicalModelSnap,
    ProviderSnap,
    RouteSnap,
    Snapshot,
    VirtualEndpointSnap,
)

log = logging.getLogger(__name__)

LAST_USED_FLUSH_SECONDS = 5.0
SQL_SAFETY_POLL_SECONDS = 10.0  # with Redis, the row is still checked now and then


def redis_version_key() -> str:
    return settings.REDIS_PREFIX + "config:version"


# --- building a snapshot (SQL) -------------------------------------------------------------
def _decimal_map(raw: dict) -> dict:
    return {size: {q: Decimal(str(v)) for q, v in (qualities or {}).items()} for size, qualities in (raw or {}).items()}


def _provider_snaps() -> dict[int, ProviderSnap]:
    from routing.models import Provider

    snaps = {}
    for p in Provider.objects.filter(enabled=True):
        try:
            api_key = p.get_credentials()
        except ValueError:
            log.error("provider %s: stored credential cannot be decrypted; its routes are disabled", p.pk)
            continue
        snaps[p.pk] = ProviderSnap(
            id=p.pk, name=p.name, kind=p.kind, base_url=p.base_url.rstrip("/"), api_key=api_key,
            api_version=p.api_version, currency=p.currency, connect_timeout=p.connect_timeout,
            read_timeout=p.read_timeout, first_byte_timeout=p.first_byte_timeout,
            allow_private=p.allow_private_network, proxy=p.proxy_url or None,
        )
    return snaps


def _physical_model_snaps(providers: dict[int, ProviderSnap]) -> dict[int, PhysicalModelSnap]:
    from routing.models import PhysicalModel

    snaps = {}
    for pm in PhysicalModel.objects.filter(enabled=True, provider_id__in=list(providers)):
        snaps[pm.pk] = PhysicalModelSnap(
            id=pm.pk, upstream_model=pm.upstream_model, modality=pm.modality, provider=providers[pm.provider_id],
            input_cost_per_mtok=pm.input_cost_per_mtok, cached_input_cost_per_mtok=pm.cached_input_cost_per_mtok,
            cache_write_cost_per_mtok=pm.cache_write_cost_per_mtok, output_cost_per_mtok=pm.output_cost_per_mtok,
            image_costs=_decimal_map(pm.image_costs), audio_cost_per_second=pm.audio_cost_per_second,
            limit_parameter=output_limits.parameter(providers[pm.provider_id].kind, pm.upstream_model,
                                                    pm.output_limit_parameter),
            max_output_tokens=output_limits.cap(pm.upstream_model, pm.max_output_tokens),
        )
    return snaps


def _logical_model_snaps(physical: dict[int, PhysicalModelSnap]) -> dict[tuple[int, str], LogicalModelSnap]:
    from routing.models import LogicalModel, Route

    routes: dict[int, list[RouteSnap]] = {}
    for r in Route.objects.filter(enabled=True, physical_model_id__in=list(physical)).order_by("priority", "-weight", "id"):
        routes.setdefault(r.logical_model_id, []).append(
            RouteSnap(id=r.pk, priority=r.priority, weight=float(r.weight), physical_model=physical[r.physical_model_id])
        )
    snaps = {}
    for lm in LogicalModel.objects.filter(enabled=True):
        snaps[(lm.organization_id, lm.name)] = LogicalModelSnap(
            id=lm.pk, organization_id=lm.organization_id, name=lm.name, modality=lm.modality,
            input_price_per_mtok=lm.input_price_per_mtok, cached_input_price_per_mtok=lm.cached_input_price_per_mtok,
            cache_write_price_per_mtok=lm.cache_write_price_per_mtok, output_price_per_mtok=lm.output_price_per_mtok,
            image_prices=_decimal_map(lm.image_prices), price_per_second=lm.price_per_second,
            default_max_output_tokens=lm.default_max_output_tokens, routes=tuple(routes.get(lm.pk, ())),
            unsupported_params=lm.unsupported_params,
            fallback_on_timeout=lm.fallback_on_timeout,
        )
    return snaps


def _endpoint_snaps() -> dict[int, VirtualEndpointSnap]:
    from routing.models import Organization, VirtualEndpoint

    orgs = {o.pk: OrganizationSnap(id=o.pk, name=o.name, markup=o.markup) for o in Organization.objects.all()}
    allowed: dict[int, set[str]] = {}
    through = VirtualEndpoint.allowed_models.through
    for ve_id, name in through.objects.filter(logicalmodel__enabled=True).values_list(
        "virtualendpoint_id", "logicalmodel__name"
    ):
        allowed.setdefault(ve_id, set()).add(name)
    snaps = {}
    for ve in VirtualEndpoint.objects.all():
        snaps[ve.pk] = VirtualEndpointSnap(
            id=ve.pk, public_id=ve.public_id, name=ve.name, organization=orgs[ve.organization_id], status=ve.status,
            exhaustion_mode=ve.exhaustion_mode, requests_per_minute=ve.requests_per_minute,
            tokens_per_minute=ve.tokens_per_minute, allowed_model_names=frozenset(allowed.get(ve.pk, ())),
            low_balance_threshold=ve.low_balance_threshold,
        )
    return snaps


def _key_snaps() -> dict[str, AccessKeySnap]:
    from routing.models import AccessKey

    allowed: dict[int, set[str]] = {}
    for key_id, name in AccessKey.allowed_models.through.objects.values_list("accesskey_id", "logicalmodel__name"):
        allowed.setdefault(key_id, set()).add(name)
    return {
        k.key_hash: AccessKeySnap(
            id=k.pk, name=k.name, prefix=k.prefix, virtual_endpoint_id=k.virtual_endpoint_id, enabled=k.enabled,
            expires_at=k.expires_at, credit_limit=k.credit_limit, allowed_model_names=frozenset(allowed.get(k.pk, ())),
        )
        for k in AccessKey.objects.all()
    }


def read_version() -> int:
    from routing.models import ConfigVersion

    return ConfigVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0


def build_snapshot() -> Snapshot:
    """Read the whole routing configuration. The version is read first: a change that
    commits while we read moves the version again, so the next poll rebuilds."""
    version = read_version()
    providers = _provider_snaps()
    physical = _physical_model_snaps(providers)
    endpoints = _endpoint_snaps()
    return Snapshot(
        version=version,
        keys_by_hash=_key_snaps(),
        endpoints_by_id=endpoints,
        endpoints_by_public_id={ve.public_id: ve for ve in endpoints.values()},
        logical_models=_logical_model_snaps(physical),
    )


def _flush_last_used(key_ids: set[int]) -> None:
    from routing.models import AccessKey

    # A plain UPDATE, not a config change: the snapshot does not carry last_used_at.
    AccessKey.objects.filter(pk__in=key_ids).update(last_used_at=timezone.now())


# --- the cache -----------------------------------------------------------------------------
class RoutingCache:
    def __init__(self):
        self.snapshot: Snapshot | None = None
        self._dirty = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tb-routing-cache")
        self._build_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._redis = None  # redis.asyncio client of the watcher's loop
        self._redis_sync = None
        self._redis_version: bytes | None = None
        self._last_used: set[int] = set()
        self.rebuilds = 0

    # --- sync API (tests, management commands) ---------------------------------------
    def refresh_now(self) -> Snapshot:
        with self._build_lock:
            snap = build_snapshot()
            self.snapshot = snap  # one assignment: readers see the old or the new, never half
            self._dirty = False
            self.rebuilds += 1
        return snap

    def mark_dirty(self) -> None:
        self._dirty = True

    def touch_key(self, key_id: int) -> None:
        """Remember that a key was used; written to SQL in batches by the watcher."""
        self._last_used.add(key_id)

    # --- async API (the gateway) ---------------------------------------------------------
    async def ensure_started(self) -> Snapshot:
        """Load the snapshot if there is none and make sure this loop runs the watcher.
        Cheap enough to call on every request (one identity check)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._task = loop.create_task(self._watch(), name="tb-routing-cache-watch")
        if self.snapshot is None:
            await self._in_thread(self.refresh_now)
        return self.snapshot

    async def stop(self) -> None:
        task, self._task, self._loop = self._task, None, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self._flush_last_used()
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:
                pass
            self._redis = None
            breaker._redis = None

    async def _in_thread(self, fn, *args):
        def job():
            try:
                return fn(*args)
            finally:
                connection.close()

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def _watch(self) -> None:
        self._connect_redis()
        last_sql_check, last_flush = 0.0, time.monotonic()  # first tick also checks the row
        while True:
            interval = settings.GATEWAY_CONFIG_POLL_SECONDS
            if self._redis is not None:
                interval = min(interval, 0.5)
            await asyncio.sleep(interval)
            try:
                now = time.monotonic()
                changed = self._dirty
                if self._redis is not None:
                    changed = await self._redis_version_moved() or changed
                    await breaker.pull()
                    if now - last_sql_check >= SQL_SAFETY_POLL_SECONDS:
                        last_sql_check = now
                        changed = changed or await self._sql_version_moved()
                else:
                    changed = changed or await self._sql_version_moved()
                if changed:
                    await self._in_thread(self.refresh_now)
                if now - last_flush >= LAST_USED_FLUSH_SECONDS:
                    last_flush = now
                    await self._flush_last_used()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("routing cache: refresh failed (%s); serving the previous snapshot", type(exc).__name__)

    async def _sql_version_moved(self) -> bool:
        version = await self._in_thread(read_version)
        return self.snapshot is None or version != self.snapshot.version

    async def _redis_version_moved(self) -> bool:
        value = await self._redis.get(redis_version_key())
        moved = self._redis_version is not None and value != self._redis_version
        self._redis_version = value
        return moved

    async def _flush_last_used(self) -> None:
        if not self._last_used:
            return
        ids, self._last_used = self._last_used, set()
        try:
            await self._in_thread(_flush_last_used, ids)
        except Exception as exc:
            log.warning("routing cache: could not record key last-use (%s)", type(exc).__name__)

    def _connect_redis(self) -> None:
        if not settings.REDIS_URL:
            return
        import redis.asyncio as aredis

        self._redis = aredis.Redis.from_url(settings.REDIS_URL)
        self._redis_version = None
        breaker._redis = self._redis
        breaker._script = None

    # --- the config_changed listener (sync, after commit) --------------------------------
    def publish_change(self) -> None:
        self._dirty = True
        if not settings.REDIS_URL:
            return
        try:
            if self._redis_sync is None:
                import redis

                self._redis_sync = redis.Redis.from_url(settings.REDIS_URL)
            self._redis_sync.incr(redis_version_key())
        except Exception as exc:
            log.warning("routing cache: could not publish a config change to Redis (%s)", type(exc).__name__)


routing_cache = RoutingCache()


def _on_config_changed() -> None:
    routing_cache.publish_change()


def install() -> None:
    """Register the config_changed listener (called from GatewayConfig.ready())."""
    from routing.services import on_config_changed

    on_config_changed(_on_config_changed)
