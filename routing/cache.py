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
import json
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


def _provider_snaps(**filters) -> dict[int, ProviderSnap]:
    from routing.models import Provider

    snaps = {}
    for p in Provider.objects.filter(enabled=True, **filters):
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


def _physical_model_snaps(providers: dict[int, ProviderSnap], **filters) -> dict[int, PhysicalModelSnap]:
    from routing.models import PhysicalModel

    snaps = {}
    for pm in PhysicalModel.objects.filter(enabled=True, provider_id__in=list(providers), **filters):
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


def _logical_model_snaps(physical: dict[int, PhysicalModelSnap], **filters) -> dict[tuple[int, str], LogicalModelSnap]:
    from routing.models import LogicalModel, Route

    routes: dict[int, list[RouteSnap]] = {}
    route_rows = Route.objects.filter(enabled=True, physical_model_id__in=list(physical))
    if filters:
        route_rows = route_rows.filter(**{"logical_model__" + k: v for k, v in filters.items()})
    for r in route_rows.order_by("priority", "-weight", "id"):
        routes.setdefault(r.logical_model_id, []).append(
            RouteSnap(id=r.pk, priority=r.priority, weight=float(r.weight), physical_model=physical[r.physical_model_id])
        )
    snaps = {}
    for lm in LogicalModel.objects.filter(enabled=True, **filters):
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


def _endpoint_snaps(**filters) -> dict[int, VirtualEndpointSnap]:
    from routing.models import Organization, VirtualEndpoint

    endpoints = list(VirtualEndpoint.objects.filter(**filters))
    org_ids = {ve.organization_id for ve in endpoints}
    orgs = {o.pk: OrganizationSnap(id=o.pk, name=o.name, markup=o.markup)
            for o in (Organization.objects.all() if not filters else Organization.objects.filter(pk__in=org_ids))}
    allowed: dict[int, set[str]] = {}
    through = VirtualEndpoint.allowed_models.through.objects.filter(logicalmodel__enabled=True)
    if filters:
        through = through.filter(virtualendpoint_id__in=[ve.pk for ve in endpoints])
    for ve_id, name in through.values_list("virtualendpoint_id", "logicalmodel__name"):
        allowed.setdefault(ve_id, set()).add(name)
    snaps = {}
    for ve in endpoints:
        snaps[ve.pk] = VirtualEndpointSnap(
            id=ve.pk, public_id=ve.public_id, name=ve.name, organization=orgs[ve.organization_id], status=ve.status,
            exhaustion_mode=ve.exhaustion_mode, requests_per_minute=ve.requests_per_minute,
            tokens_per_minute=ve.tokens_per_minute, allowed_model_names=frozenset(allowed.get(ve.pk, ())),
            low_balance_threshold=ve.low_balance_threshold,
        )
    return snaps


def load_endpoint(pk: int | None = None, public_id: str | None = None):
    """One VE (or None) and its organization's logical models, for a miss."""
    snaps = _endpoint_snaps(**({"pk": pk} if pk is not None else {"public_id": public_id}))
    if not snaps:
        return None, {}
    ve = next(iter(snaps.values()))
    return ve, organization_models(ve.organization.id)


def organization_models(org_id: int) -> dict[tuple[int, str], LogicalModelSnap]:
    """One organization's enabled logical models with their routes (the physical models
    and providers its routes name), as a full build would read them."""
    from routing.models import PhysicalModel, Route

    pm_ids = Route.objects.filter(logical_model__organization_id=org_id).values("physical_model_id")
    provider_ids = set(PhysicalModel.objects.filter(pk__in=pm_ids).values_list("provider_id", flat=True))
    providers = _provider_snaps(pk__in=provider_ids)
    physical = _physical_model_snaps(providers, pk__in=pm_ids)
    return _logical_model_snaps(physical, organization_id=org_id)


def _key_snaps(keys) -> dict[str, AccessKeySnap]:
    from routing.models import AccessKey

    keys = list(keys)
    allowed: dict[int, set[str]] = {}
    through = AccessKey.allowed_models.through.objects.filter(accesskey_id__in=[k.pk for k in keys])
    for key_id, name in through.values_list("accesskey_id", "logicalmodel__name"):
        allowed.setdefault(key_id, set()).add(name)
    return {
        k.key_hash: AccessKeySnap(
            id=k.pk, name=k.name, prefix=k.prefix, virtual_endpoint_id=k.virtual_endpoint_id, enabled=k.enabled,
            expires_at=k.expires_at, credit_limit=k.credit_limit, allowed_model_names=frozenset(allowed.get(k.pk, ())),
        )
        for k in keys
    }


def hot_keys(limit: int) -> dict[str, AccessKeySnap]:
    """The `limit` most recently used keys (start-up and full rebuilds; the rest load on a miss)."""
    from django.db.models import F

    from routing.models import AccessKey

    keys = list(AccessKey.objects.order_by(F("last_used_at").desc(nulls_last=True), "-id")[:limit])
    snaps: dict[str, AccessKeySnap] = {}
    for i in range(0, len(keys), 5000):  # in slices: SQLite caps a query's parameters
        snaps.update(_key_snaps(keys[i:i + 5000]))
    return snaps


def load_keys(hashes: list[str]) -> dict[str, AccessKeySnap]:
    """The keys among `hashes` (one query for the rows, one for their model lists)."""
    from routing.models import AccessKey

    return _key_snaps(AccessKey.objects.filter(key_hash__in=hashes))


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
        keys_by_hash=hot_keys(settings.GATEWAY_KEY_CACHE_SIZE),
        endpoints_by_id=endpoints,
        endpoints_by_public_id={ve.public_id: ve for ve in endpoints.values()},
        logical_models=_logical_model_snaps(physical),
    )


def _flush_last_used(key_ids: set[int]) -> None:
    from routing.models import AccessKey

    # A plain UPDATE, not a config change: the snapshot does not carry last_used_at.
    AccessKey.objects.filter(pk__in=key_ids).update(last_used_at=timezone.now())


def _nothing() -> None:
    return None


# --- the cache -----------------------------------------------------------------------------
_SET_MAX = """local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('PUBLISH', KEYS[2], ARGV[2])"""
KEEP_SECONDS = 2.0
MISS_BATCH = 1000  # key hashes looked up in one query
GAP_LIMIT = 1000  # more unseen versions than this: rebuild at once


def redis_channel() -> str:
    return settings.REDIS_PREFIX + "config:changes"


class RoutingCache:
    def __init__(self):
        self.snapshot: Snapshot | None = None
        self._dirty = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tb-routing-cache")
        self._build_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self._redis = None  # redis.asyncio client of the watcher's loop
        self._redis_sync = None
        self._last_used: set[int] = set()
        self._recent_used: set[int] = set()  # the previous flush's keys: LRU's second chance
        # Versions: `_base` is covered (built or every change up to it seen), `_seen` the
        # changes above it applied here; `_recent` their contents, replayed after a rebuild.
        self._base = 0
        self._seen: set[int] = set()
        self._recent: dict[int, object] = {}
        self._gap: tuple | None = None
        self._latest = 0
        self._seq = 0  # moves on every applied change: a miss lookup that raced one is redone
        self._negative: dict = {}  # key hash / ("ve", id) / ("pub", public id) -> monotonic expiry
        self._pending: dict[str, asyncio.Future] = {}
        self._batcher: asyncio.Task | None = None
        self._kept_at: float | None = None  # the worker's connection, kept since (miss lookups)
        self.rebuilds = 0
        self.miss_queries = 0  # SQL lookups made for misses (bench, tests)

    # --- sync API (tests, management commands) ---------------------------------------
    def refresh_now(self) -> Snapshot:
        with self._build_lock:
            seq, seen_before = self._seq, set(self._seen)
            snap = build_snapshot()
            self.snapshot = snap  # one assignment: readers see the old or the new, never half
            self._dirty = False
            self.rebuilds += 1
            if snap.version < self._base:  # another database (restored, or a test's): forget its versions
                self._seen, self._recent = set(), {}
            self._base = self._latest = snap.version
            # a change seen before the build began is in it: one seen then "above" it is stale
            self._seen = {v for v in self._seen - seen_before if v > self._base}
            self._gap = None
            # changes applied while we read (their version above ours) are applied again
            for v, change in list(self._recent.items()):
                if v > snap.version or self._seq != seq:
                    self._drop(change)
            self._recent = {v: c for v, c in self._recent.items() if v > self._base}
        return snap

    def mark_dirty(self) -> None:
        self._dirty = True

    def touch_key(self, key_id: int) -> None:
        """Remember that a key was used; written to SQL in batches by the watcher."""
        self._last_used.add(key_id)

    # --- applying one change (any thread) ------------------------------------------------
    def apply(self, change) -> None:
        """Patch this process for one committed change: drop the named keys and VEs (the next
        call loads them from SQL), reload the named organizations' models (`load_orgs`), or
        for a full change mark the snapshot for a rebuild. Idempotent."""
        self._seq += 1
        if change.version > self._base:
            self._seen.add(change.version)
            self._recent[change.version] = change
        if change.full:
            self._dirty = True
        self._drop(change)

    def _drop(self, change) -> None:
        snap = self.snapshot
        for h in change.keys:
            self._negative.pop(h, None)
            if snap is not None:
                snap.keys_by_hash.pop(h, None)
        for ve_id, public_id in change.endpoints:
            self._negative.pop(("ve", ve_id), None)
            self._negative.pop(("pub", public_id), None)
            if snap is not None:
                snap.endpoints_by_id.pop(ve_id, None)
                snap.endpoints_by_public_id.pop(public_id, None)
        if change.organizations and snap is not None:
            orgs = set(change.organizations)
            for ve in [ve for ve in snap.endpoints_by_id.values() if ve.organization.id in orgs]:
                snap.endpoints_by_id.pop(ve.id, None)  # their allowed-model lists name the models
                snap.endpoints_by_public_id.pop(ve.public_id, None)

    def _patch_models(self, org_id: int, models: dict) -> None:
        snap = self.snapshot
        if snap is None:
            return
        for name in [k for k in snap.logical_models if k[0] == org_id]:
            if name not in models:
                snap.logical_models.pop(name, None)
        snap.logical_models.update(models)

    def load_orgs_now(self, change) -> None:
        """Sync: reload the change's organizations' models (the committing thread, so the
        next call in this process sees them)."""
        for org_id in change.organizations:
            self._patch_models(org_id, organization_models(org_id))

    async def _load_orgs(self, change) -> None:
        for org_id in change.organizations:
            self._patch_models(org_id, await self._in_thread(organization_models, org_id))

    # --- misses (the gateway's loop) -------------------------------------------------------
    def _negative_hit(self, name) -> bool:
        expiry = self._negative.get(name)
        if expiry is None:
            return False
        if expiry > time.monotonic():
            return True
        self._negative.pop(name, None)
        return False

    def _negative_add(self, name) -> None:
        negative = self._negative
        negative[name] = time.monotonic() + settings.GATEWAY_NEGATIVE_CACHE_SECONDS
        while len(negative) > settings.GATEWAY_NEGATIVE_CACHE_SIZE:
            negative.pop(next(iter(negative)), None)  # the oldest answer goes first

    def _put_key(self, key_hash: str, key: AccessKeySnap) -> None:
        keys = self.snapshot.keys_by_hash
        keys.pop(key_hash, None)
        limit = max(settings.GATEWAY_KEY_CACHE_SIZE, 1)
        chances = 64
        while len(keys) >= limit:  # room first: the key we add is not the one evicted
            oldest = next(iter(keys))
            old = keys.pop(oldest)
            if chances and (old.id in self._last_used or old.id in self._recent_used):
                chances -= 1
                keys[oldest] = old  # used lately: to the young end (second chance)
        keys[key_hash] = key

    def _put_endpoint(self, ve: VirtualEndpointSnap, models: dict) -> None:
        snap = self.snapshot
        self._patch_models(ve.organization.id, models)
        snap.endpoints_by_id[ve.id] = ve
        snap.endpoints_by_public_id[ve.public_id] = ve

    async def resolve_miss(self, key_hash: str | None, ve_public_id: str | None) -> bool:
        """After a refused lookup: load what the snapshot lacks (the key, the URL's VE, the
        key's VE) from SQL off the loop. True when something was loaded (authenticate again).
        Unknown names are remembered briefly (bounded) so repeats do not reach SQL."""
        loaded = False
        snap = self.snapshot
        if ve_public_id is not None and ve_public_id not in snap.endpoints_by_public_id:
            if not await self._load_endpoint(("pub", ve_public_id), public_id=ve_public_id):
                return False
            loaded = True
        if not key_hash:
            return loaded
        key = self.snapshot.keys_by_hash.get(key_hash)
        if key is None:
            if self._negative_hit(key_hash):
                return loaded
            key = await self._lookup_key(key_hash)
            if key is None:
                return loaded
            loaded = True
        if key.virtual_endpoint_id not in self.snapshot.endpoints_by_id:
            loaded = await self._load_endpoint(("ve", key.virtual_endpoint_id), pk=key.virtual_endpoint_id) or loaded
        return loaded

    async def _load_endpoint(self, name, **lookup) -> bool:
        if self._negative_hit(name):
            return False
        for _ in range(3):
            seq = self._seq
            ve, models = await self._in_thread(load_endpoint, lookup.get("pk"), lookup.get("public_id"), keep=True)
            self.miss_queries += 1
            if self._seq == seq:
                break
        if ve is None:
            self._negative_add(name)
            return False
        self._put_endpoint(ve, models)
        return True

    async def _lookup_key(self, key_hash: str) -> AccessKeySnap | None:
        """Misses are looked up in batches: one query in flight per process, each for every
        hash that missed meanwhile (a flood of unknown keys costs one query per batch)."""
        future = self._pending.get(key_hash)
        if future is None:
            future = self._pending[key_hash] = asyncio.get_running_loop().create_future()
            if self._batcher is None or self._batcher.done():
                self._batcher = asyncio.get_running_loop().create_task(self._run_batches())
        return await asyncio.shield(future)

    async def _run_batches(self) -> None:
        while self._pending:
            batch = {}
            for key_hash in list(self._pending)[:MISS_BATCH]:
                batch[key_hash] = self._pending.pop(key_hash)
            seq = self._seq
            try:
                found = await self._in_thread(load_keys, list(batch), keep=True)
            except Exception as exc:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self.miss_queries += 1
            if self._seq != seq and any(h in found for h in batch):  # a change raced us: ask again
                for key_hash, future in batch.items():
                    self._pending.setdefault(key_hash, future)
                continue
            for key_hash, future in batch.items():
                key = found.get(key_hash)
                if key is None:
                    self._negative_add(key_hash)
                else:
                    self._put_key(key_hash, key)
                if not future.done():
                    future.set_result(key)

    # --- async API (the gateway) ---------------------------------------------------------
    async def ensure_started(self) -> Snapshot:
        """Load the snapshot if there is none and make sure this loop runs the watcher.
        Cheap enough to call on every request (one identity check)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._pending, self._batcher = {}, None
            self._task = loop.create_task(self._watch(), name="tb-routing-cache-watch")
        if self.snapshot is None:
            await self._in_thread(self.refresh_now)
        return self.snapshot

    async def stop(self) -> None:
        task, self._task, self._loop = self._task, None, None
        listener, self._listener = self._listener, None
        for t in (task, listener):
            if t is not None:
                t.cancel()
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass
        await self._flush_last_used()
        if self._kept_at is not None:
            try:
                await self._in_thread(_nothing)  # closes the kept connection
            except Exception:
                pass
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:
                pass
            self._redis = None
            breaker._redis = None

    async def _in_thread(self, fn, *args, keep: bool = False):
        """Run fn in the cache's worker thread. Its connection is closed after the job, but
        a miss lookup (`keep`) keeps it: a new PostgreSQL connection costs ~20-30 ms, a cold
        key's first call should not. The watcher closes it once idle (KEEP_SECONDS)."""
        def job():
            try:
                return fn(*args)
            finally:
                if keep:
                    self._kept_at = time.monotonic()
                else:
                    self._kept_at = None
                    connection.close()

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def _close_idle(self) -> None:
        if self._kept_at is not None and time.monotonic() - self._kept_at > KEEP_SECONDS:
            await self._in_thread(_nothing)

    async def _watch(self) -> None:
        self._connect_redis()
        if self._redis is not None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="tb-routing-cache-listen")
        last_sql_check, last_flush = 0.0, time.monotonic()  # first tick also checks the row
        while True:
            interval = settings.GATEWAY_CONFIG_POLL_SECONDS
            if self._redis is not None:
                interval = min(interval, 0.5)
            await asyncio.sleep(interval)
            try:
                now = time.monotonic()
                latest = None
                if self._redis is not None:
                    raw = await self._redis.get(redis_version_key())
                    latest = int(raw) if raw else 0
                    await breaker.pull()
                    if now - last_sql_check >= SQL_SAFETY_POLL_SECONDS:
                        last_sql_check = now
                        latest = max(latest, await self._in_thread(read_version))
                else:
                    latest = await self._in_thread(read_version)
                if self._dirty or self._missed(latest):
                    await self._in_thread(self.refresh_now)
                if now - last_flush >= LAST_USED_FLUSH_SECONDS:
                    last_flush = now
                    await self._flush_last_used()
                await self._close_idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("routing cache: refresh failed (%s); serving the previous snapshot", type(exc).__name__)

    def _missed(self, latest: int) -> bool:
        """True when a change up to `latest` never reached this process (a lost message, a
        change from a process without Redis): seen missing on two checks in a row (with
        Redis the SQL row is read every SQL_SAFETY_POLL_SECONDS: healed within ~10.5 s)."""
        if self.snapshot is None:
            return True
        latest = self._latest = max(self._latest, latest)  # the SQL check may know more than Redis
        if latest <= self._base:
            return False
        if latest - self._base > GAP_LIMIT:
            return True
        missing = tuple(v for v in range(self._base + 1, latest + 1) if v not in self._seen)
        if not missing:
            self._base = latest
            self._seen = {v for v in self._seen if v > latest}
            self._recent = {v: c for v, c in self._recent.items() if v > latest}
            self._gap = None
            return False
        if self._redis is None:  # no messages in flight to wait for: rebuild now
            return True
        previous, self._gap = self._gap, missing
        if previous is not None and set(previous) & set(missing):
            self._gap = None
            return True
        return False

    async def _listen(self) -> None:
        from routing.services import ConfigChange

        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(redis_channel())
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        change = ConfigChange.from_json(json.loads(message["data"]))
                    except (ValueError, KeyError, TypeError):
                        continue
                    self.apply(change)
                    if change.organizations:
                        await self._load_orgs(change)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: the periodic check heals what we miss
                log.warning("routing cache: change listener stopped (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def _flush_last_used(self) -> None:
        if not self._last_used:
            return
        ids, self._last_used = self._last_used, set()
        self._recent_used = ids
        try:
            await self._in_thread(_flush_last_used, ids)
        except Exception as exc:
            log.warning("routing cache: could not record key last-use (%s)", type(exc).__name__)

    def _connect_redis(self) -> None:
        if not settings.REDIS_URL:
            return
        import redis.asyncio as aredis

        self._redis = aredis.Redis.from_url(settings.REDIS_URL)
        breaker._redis = self._redis
        breaker._script = None

    # --- the config_changed listener (sync, after commit) --------------------------------
    def publish_change(self, change) -> None:
        """This process first (the next call here sees the change), then every other one
        through Redis: the version key (max) and the change on the channel."""
        self.apply(change)
        if change.organizations:
            try:
                self.load_orgs_now(change)
            except Exception as exc:
                log.warning("routing cache: could not reload organizations (%s)", type(exc).__name__)
                self._dirty = True
        if not settings.REDIS_URL:
            return
        try:
            if self._redis_sync is None:
                import redis

                self._redis_sync = redis.Redis.from_url(settings.REDIS_URL)
            self._redis_sync.eval(_SET_MAX, 2, redis_version_key(), redis_channel(), change.version,
                                  json.dumps(change.as_json()))
        except Exception as exc:
            log.warning("routing cache: could not publish a config change to Redis (%s)", type(exc).__name__)


routing_cache = RoutingCache()


def _on_config_changed(change) -> None:
    routing_cache.publish_change(change)


def install() -> None:
    """Register the config_changed listener (called from GatewayConfig.ready())."""
    from routing.services import on_config_changed

    on_config_changed(_on_config_changed)
