"""Writes to routing configuration. Every write that changes what the gateway serves
ends with `config_changed(...)`, naming what changed (key hashes, VEs, organizations) so
gateway processes patch those entries; a bare `config_changed()` asks for a full rebuild."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import F
from django.utils.text import slugify

from billing.ledger import Posted, post_entry
from billing.models import LedgerKind
from routing.models import (
    AccessKey,
    ConfigVersion,
    LogicalModel,
    ManagementToken,
    Membership,
    Organization,
    PhysicalModel,
    Provider,
    Role,
    Route,
    VirtualEndpoint,
    hash_secret,
)

_config_listeners: list = []


@dataclass(frozen=True)
class ConfigChange:
    """One committed configuration change. `full`: anything else (providers' shared state,
    rates, admin bulk edits): every process rebuilds its snapshot."""

    version: int
    keys: tuple[str, ...] = ()  # access-key hashes
    endpoints: tuple[tuple[int, str], ...] = ()  # (VE id, public id)
    organizations: tuple[int, ...] = ()  # logical models, routes, prices, providers of these orgs
    full: bool = False

    def as_json(self) -> dict:
        return {"v": self.version, "k": list(self.keys), "e": [list(e) for e in self.endpoints],
                "o": list(self.organizations), "f": self.full}

    @classmethod
    def from_json(cls, data: dict) -> "ConfigChange":
        return cls(version=int(data["v"]), keys=tuple(data.get("k", ())),
                   endpoints=tuple((int(i), str(p)) for i, p in data.get("e", ())),
                   organizations=tuple(int(o) for o in data.get("o", ())), full=bool(data.get("f")))


def on_config_changed(listener) -> None:
    """Register a callable run with the ConfigChange after the commit of any configuration
    change (the gateway's cache patches itself and publishes the change to Redis here)."""
    if listener not in _config_listeners:
        _config_listeners.append(listener)


def config_changed(*, keys: Iterable[str] = (), endpoints: Iterable = (), organizations: Iterable[int] = ()) -> None:
    """Move the version (inside the caller's transaction) and, after commit, tell the
    listeners what changed. Naming nothing means a full rebuild."""
    updated = ConfigVersion.objects.filter(pk=1).update(version=F("version") + 1)
    if not updated:
        ConfigVersion.objects.get_or_create(pk=1, defaults={"version": 1})
    version = ConfigVersion.objects.filter(pk=1).values_list("version", flat=True).first()  # ours: the row is locked
    endpoints = tuple((e.pk, e.public_id) if isinstance(e, VirtualEndpoint) else tuple(e) for e in endpoints)
    keys, organizations = tuple(keys), tuple(organizations)
    change = ConfigChange(version=version, keys=keys, endpoints=endpoints, organizations=organizations,
                          full=not (keys or endpoints or organizations))
    for listener in list(_config_listeners):
        transaction.on_commit(partial(listener, change))


@transaction.atomic
def key_create(
    *,
    virtual_endpoint: VirtualEndpoint,
    name: str,
    expires_at=None,
    credit_limit: int | None = None,
    allowed_models=(),
    enabled: bool = True,
) -> tuple[AccessKey, str]:
    """Create an access key; returns it with its secret, which is never stored or shown again."""
    secret = AccessKey.new_secret()
    key = AccessKey.objects.create(
        virtual_endpoint=virtual_endpoint,
        name=name,
        prefix=secret[:10],
        key_hash=hash_secret(secret),
        expires_at=expires_at,
        credit_limit=credit_limit,
        enabled=enabled,
    )
    if allowed_models:
        key.allowed_models.set(allowed_models)
    config_changed(keys=[key.key_hash])
    return key, secret


# --- helpers ----------------------------------------------------------------------------

def _save(instance, *, fields: dict, allowed: frozenset[str]) -> None:
    """Apply `fields` (only names in `allowed`), validate the whole row, save only what changed.

    update_fields matters: billing moves VE and key counters with F() expressions in
    other transactions, and a full save() here would write back stale counter values.
    """
    _check_fields(fields, allowed)
    for name, value in fields.items():
        setattr(instance, name, value)
    instance.full_clean()
    update_fields = list(fields)
    if hasattr(instance, "updated_at"):
        update_fields.append("updated_at")
    instance.save(update_fields=update_fields)


def _check_fields(fields: dict, allowed: frozenset[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError({name: "Unknown or read-only field." for name in sorted(unknown)})


def _create(model, **fields):
    instance = model(**fields)
    instance.full_clean()
    instance.save(force_insert=True)
    return instance


# --- organizations, merchants, management tokens ---------------------------------------

def _unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def organization_create(*, name: str, slug: str | None = None) -> Organization:
    return _create(Organization, name=name, slug=slug or _unique_slug(name))


@transaction.atomic
def management_token_create(
    *, organization: Organization, name: str = "default", created_by=None
) -> tuple[ManagementToken, str]:
    """Create a management API token; returns it with its secret (shown once, stored hashed)."""
    secret = ManagementToken.new_secret()
    token = ManagementToken.objects.create(
        organization=organization, name=name, prefix=secret[:10], token_hash=hash_secret(secret), created_by=created_by
    )
    return token, secret


@transaction.atomic
def management_token_revoke(*, token: ManagementToken) -> ManagementToken:
    token.revoked = True
    token.save(update_fields=["revoked"])
    return token


@transaction.atomic
def merchant_create(
    *, organization_name: str, email: str, password: str | None = None
) -> tuple[Organization, object, str]:
    """A new organization, its owner (username = email) and a management token secret."""
    User = get_user_model()
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": f"{email!r} is not an email address."}) from None
    if User.objects.filter(username__iexact=email).exists():
        raise ValidationError({"email": f"A user {email} already exists."})
    organization = organization_create(name=organization_name)
    user = User.objects.create_user(username=email, email=email, password=password)  # None: no password login
    Membership.objects.create(user=user, organization=organization, role=Role.OWNER)
    _, secret = management_token_create(organization=organization, name="created by create_merchant", created_by=user)
    return organization, user, secret


# --- providers ------------------------------------------------------------------------

PROVIDER_FIELDS = frozenset(
    {"name", "kind", "base_url", "api_version", "currency", "connect_timeout", "first_byte_timeout", "read_timeout",
     "enabled", "allow_private_network", "proxy_url"}  # (the last two: operator tools only, not in the API's schemas)
)


@transaction.atomic
def provider_create(*, organization: Organization, name: str, kind: str, base_url: str, api_key: str = "",
                    **fields) -> Provider:
    """`api_key` is write-only: encrypted here, never returned by any read."""
    provider = Provider(organization=organization, name=name, kind=kind, base_url=base_url)
    if api_key:
        provider.set_credentials(api_key)
    _check_fields(fields, PROVIDER_FIELDS)
    for field_name, value in fields.items():
        setattr(provider, field_name, value)
    provider.full_clean()
    provider.save(force_insert=True)
    config_changed()
    return provider


@transaction.atomic
def provider_update(*, provider: Provider, api_key: str | None = None, **fields) -> Provider:
    """An empty or missing `api_key` keeps the stored credential (forms never echo it back)."""
    if api_key:
        provider.set_credentials(api_key)
        fields_to_save = {**fields, "credentials_encrypted": provider.credentials_encrypted}
    else:
        fields_to_save = fields
    _save(provider, fields=fields_to_save, allowed=PROVIDER_FIELDS | {"credentials_encrypted"})
    config_changed()
    return provider


@transaction.atomic
def provider_delete(*, provider: Provider) -> None:
    provider.delete()
    config_changed()


# --- physical models ------------------------------------------------------------------

PHYSICAL_MODEL_FIELDS = frozenset(
    {"upstream_model", "modality", "input_cost_per_mtok", "cached_input_cost_per_mtok", "cache_write_cost_per_mtok",
     "output_cost_per_mtok", "image_costs", "audio_cost_per_second", "output_limit_parameter", "max_output_tokens",
     "enabled"}
)


@transaction.atomic
def physical_model_create(*, provider: Provider, upstream_model: str, **fields) -> PhysicalModel:
    _check_fields(fields, PHYSICAL_MODEL_FIELDS)
    physical_model = _create(PhysicalModel, provider=provider, upstream_model=upstream_model, **fields)
    config_changed()
    return physical_model


@transaction.atomic
def physical_model_update(*, physical_model: PhysicalModel, **fields) -> PhysicalModel:
    if "modality" in fields and fields["modality"] != physical_model.modality:
        if physical_model.routes.exclude(logical_model__modality=fields["modality"]).exists():
            raise ValidationError({"modality": "Logical models of another modality route to this model."})
    _save(physical_model, fields=fields, allowed=PHYSICAL_MODEL_FIELDS)
    config_changed()
    return physical_model


@transaction.atomic
def physical_model_delete(*, physical_model: PhysicalModel) -> None:
    physical_model.delete()
    config_changed()


# --- logical models and routes --------------------------------------------------------

LOGICAL_MODEL_FIELDS = frozenset(
    {"name", "description", "modality", "input_price_per_mtok", "cached_input_price_per_mtok",
     "cache_write_price_per_mtok", "output_price_per_mtok", "image_prices", "price_per_second",
     "default_max_output_tokens", "unsupported_params", "fallback_on_timeout", "enabled"}
)


@dataclass(frozen=True)
class RouteSpec:
    physical_model: PhysicalModel
    priority: int = 0
    weight: Decimal = Decimal("1")
    enabled: bool = True


@transaction.atomic
def logical_model_create(*, organization: Organization, name: str, routes: Sequence[RouteSpec] = (),
                         **fields) -> LogicalModel:
    _check_fields(fields, LOGICAL_MODEL_FIELDS)
    logical_model = _create(LogicalModel, organization=organization, name=name, **fields)
    _routes_replace(logical_model, routes)
    config_changed(organizations=[organization.pk])
    return logical_model


@transaction.atomic
def logical_model_update(*, logical_model: LogicalModel, routes: Sequence[RouteSpec] | None = None,
                         **fields) -> LogicalModel:
    """`routes=None` keeps the routes; a list (even empty) replaces all of them."""
    _save(logical_model, fields=fields, allowed=LOGICAL_MODEL_FIELDS)
    if routes is not None:
        _routes_replace(logical_model, routes)
    elif "modality" in fields:
        _validate_routes(logical_model, [RouteSpec(r.physical_model) for r in logical_model.routes.all()])
    config_changed(organizations=[logical_model.organization_id])
    return logical_model


@transaction.atomic
def logical_model_delete(*, logical_model: LogicalModel) -> None:
    logical_model.delete()
    config_changed(organizations=[logical_model.organization_id])


def _validate_routes(logical_model: LogicalModel, routes: Sequence[RouteSpec]) -> None:
    seen: set[int] = set()
    for spec in routes:
        pm = spec.physical_model
        if pm.provider.organization_id != logical_model.organization_id:
            raise ValidationError({"routes": f"Unknown physical model {pm.pk}."})
        if pm.modality != logical_model.modality:
            raise ValidationError(
                {"routes": f"Physical model {pm.pk} is {pm.modality}; {logical_model.name} is {logical_model.modality}."}
            )
        if pm.pk in seen:
            raise ValidationError({"routes": f"Physical model {pm.pk} is routed twice."})
        if spec.weight < 0 or spec.priority < 0:
            raise ValidationError({"routes": "Priority and weight must be zero or more."})
        seen.add(pm.pk)


def _routes_replace(logical_model: LogicalModel, routes: Sequence[RouteSpec]) -> None:
    _validate_routes(logical_model, routes)
    logical_model.routes.all().delete()
    for spec in routes:
        _create(Route, logical_model=logical_model, physical_model=spec.physical_model, priority=spec.priority,
                weight=Decimal(spec.weight), enabled=spec.enabled)


# --- virtual endpoints ----------------------------------------------------------------

ENDPOINT_FIELDS = frozenset(
    {"name", "description", "requests_per_minute", "tokens_per_minute", "exhaustion_mode", "checkout_amounts",
     "checkout_currencies", "checkout_min_amount", "checkout_max_amount", "low_balance_threshold", "status",
     "portal_enabled", "portal_email", "portal_manage_keys"}
)


@transaction.atomic
def endpoint_create(*, organization: Organization, name: str, allowed_models: Iterable[LogicalModel] = (),
                    **fields) -> VirtualEndpoint:
    """A new VE starts with no credits: add them with grant_credits or a top-up."""
    _check_fields(fields, ENDPOINT_FIELDS)
    endpoint = _create(VirtualEndpoint, organization=organization, name=name, **fields)
    endpoint.allowed_models.set(_same_org_models(organization, allowed_models))
    config_changed(endpoints=[endpoint])
    return endpoint


@transaction.atomic
def endpoint_update(*, endpoint: VirtualEndpoint, allowed_models: Iterable[LogicalModel] | None = None,
                    **fields) -> VirtualEndpoint:
    _save(endpoint, fields=fields, allowed=ENDPOINT_FIELDS)
    if allowed_models is not None:
        endpoint.allowed_models.set(_same_org_models(endpoint.organization, allowed_models))
    config_changed(endpoints=[endpoint])
    return endpoint


@transaction.atomic
def endpoint_delete(*, endpoint: VirtualEndpoint) -> None:
    """Refused (ProtectedError) once the VE has ledger entries: suspend it instead."""
    named = (endpoint.pk, endpoint.public_id)  # delete() clears the pk
    endpoint.delete()
    config_changed(endpoints=[named])


def _same_org_models(organization: Organization, models: Iterable[LogicalModel]) -> list[LogicalModel]:
    models = list(models)
    foreign = [m for m in models if m.organization_id != organization.pk]
    if foreign:
        raise ValidationError({"allowed_models": f"Unknown logical model {foreign[0].name!r}."})
    return models


# --- access keys ----------------------------------------------------------------------

# One grant is at most 10**12 credits (as the API's schema says); a VE's budget stays below
# 2**62 micro-credits so the BIGINT counters (max 2**63 - 1) never overflow.
MAX_GRANT_MICROS = 10**18
MAX_BUDGET_MICROS = 2**62

KEY_FIELDS = frozenset({"name", "expires_at", "enabled", "credit_limit"})


@transaction.atomic
def key_update(*, key: AccessKey, allowed_models: Iterable[LogicalModel] | None = None, **fields) -> AccessKey:
    _save(key, fields=fields, allowed=KEY_FIELDS)
    if allowed_models is not None:
        key.allowed_models.set(_same_org_models(key.virtual_endpoint.organization, allowed_models))
    config_changed(keys=[key.key_hash])
    return key


@transaction.atomic
def key_revoke(*, key: AccessKey) -> AccessKey:
    """Disable a key; it stays listed (and in request logs) but authenticates nothing."""
    return key_update(key=key, enabled=False)


@transaction.atomic
def key_delete(*, key: AccessKey) -> None:
    key.delete()  # the hash stays on the instance
    config_changed(keys=[key.key_hash])


# --- credits --------------------------------------------------------------------------

def grant_credits(*, virtual_endpoint: VirtualEndpoint, credits: Decimal | int | str, note: str = "",
                  idempotency_key: str | None = None, created_by=None) -> Posted:
    """Add credits to a VE through the ledger (a `grant` entry). Replaying the same
    idempotency key returns the first entry and moves nothing."""
    from billing.money import MoneyError, credits_to_micros_exact

    try:
        amount = credits_to_micros_exact(credits)
    except MoneyError as exc:
        raise ValidationError({"credits": str(exc)}) from None
    if amount <= 0:
        raise ValidationError({"credits": "Grant a positive number of credits."})
    if amount > MAX_GRANT_MICROS:
        raise ValidationError({"credits": "At most 1,000,000,000,000 credits in one grant."})
    # Checked before the insert, not under the row lock: two racing grants could both pass,
    # which the headroom left below BIGINT_MAX (2**63 vs 2**62) absorbs.
    if VirtualEndpoint.objects.filter(pk=virtual_endpoint.pk, credit_budget__gt=MAX_BUDGET_MICROS - amount).exists():
        raise ValidationError({"credits": "This grant would take the budget past what can be stored."})
    key = idempotency_key or f"grant:{uuid.uuid4().hex}"
    return post_entry(virtual_endpoint=virtual_endpoint, kind=LedgerKind.GRANT, amount=amount, idempotency_key=key,
                      note=note, created_by=created_by)
