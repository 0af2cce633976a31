"""Management API: providers, physical models, logical models, virtual endpoints, keys.

Each endpoint parses, calls one service or selector, and renders. The caller's
organization comes from its bearer token (tokenbill/api.py); every lookup is filtered
by it, so another organization's id answers 404 like an unknown one.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Status

from billing.money import credits_to_micros_exact
from routing import selectors, services
from routing.models import AccessKey, LogicalModel, PhysicalModel, Provider, VirtualEndpoint
from routing.schemas import (
    DbId,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    KeyCreatedOut,
    KeyIn,
    KeyOut,
    KeyPatch,
    LogicalModelIn,
    LogicalModelOut,
    LogicalModelPatch,
    PhysicalModelIn,
    PhysicalModelOut,
    PhysicalModelPatch,
    ProviderIn,
    ProviderOut,
    ProviderPatch,
)

router = Router()


def _org_id(request: HttpRequest) -> int:
    return request.auth.organization_id


# --- providers ------------------------------------------------------------------------

def _provider(request, provider_id: DbId) -> Provider:
    return get_object_or_404(selectors.provider_list(organization_id=_org_id(request)), pk=provider_id)


@router.get("/providers", response=list[ProviderOut], tags=["providers"])
def provider_list(request):
    return selectors.provider_list(organization_id=_org_id(request))


@router.post("/providers", response={201: ProviderOut}, tags=["providers"])
def provider_create(request, payload: ProviderIn):
    return Status(201, services.provider_create(organization=request.auth.organization, **payload.dict()))


@router.get("/providers/{provider_id}", response=ProviderOut, tags=["providers"])
def provider_get(request, provider_id: DbId):
    return _provider(request, provider_id)


@router.patch("/providers/{provider_id}", response=ProviderOut, tags=["providers"])
def provider_update(request, provider_id: DbId, payload: ProviderPatch):
    return services.provider_update(provider=_provider(request, provider_id), **payload.dict(exclude_unset=True))


@router.delete("/providers/{provider_id}", response={204: None}, tags=["providers"])
def provider_delete(request, provider_id: DbId):
    services.provider_delete(provider=_provider(request, provider_id))
    return Status(204, None)


# --- physical models ------------------------------------------------------------------

def _physical_model(request, physical_model_id: DbId) -> PhysicalModel:
    return get_object_or_404(selectors.physical_model_list(organization_id=_org_id(request)), pk=physical_model_id)


@router.get("/physical-models", response=list[PhysicalModelOut], tags=["physical models"])
def physical_model_list(request, provider_id: DbId | None = None):
    return selectors.physical_model_list(organization_id=_org_id(request), provider_id=provider_id)


@router.post("/physical-models", response={201: PhysicalModelOut}, tags=["physical models"])
def physical_model_create(request, payload: PhysicalModelIn):
    data = payload.dict()
    provider = selectors.provider_list(organization_id=_org_id(request)).filter(pk=data.pop("provider_id")).first()
    if provider is None:
        raise ValidationError({"provider_id": "Unknown provider."})
    return Status(201, services.physical_model_create(provider=provider, **data))


@router.get("/physical-models/{physical_model_id}", response=PhysicalModelOut, tags=["physical models"])
def physical_model_get(request, physical_model_id: DbId):
    return _physical_model(request, physical_model_id)


@router.patch("/physical-models/{physical_model_id}", response=PhysicalModelOut, tags=["physical models"])
def physical_model_update(request, physical_model_id: DbId, payload: PhysicalModelPatch):
    return services.physical_model_update(
        physical_model=_physical_model(request, physical_model_id), **payload.dict(exclude_unset=True)
    )


@router.delete("/physical-models/{physical_model_id}", response={204: None}, tags=["physical models"])
def physical_model_delete(request, physical_model_id: DbId):
    services.physical_model_delete(physical_model=_physical_model(request, physical_model_id))
    return Status(204, None)


# --- logical models -------------------------------------------------------------------

def _logical_model(request, logical_model_id: DbId) -> LogicalModel:
    return get_object_or_404(selectors.logical_model_list(organization_id=_org_id(request)), pk=logical_model_id)


def _route_specs(request, routes: list[dict]) -> list[services.RouteSpec]:
    models = selectors.physical_model_list(organization_id=_org_id(request)).in_bulk(
        [r["physical_model_id"] for r in routes]
    )
    specs = []
    for route in routes:
        pm = models.get(route["physical_model_id"])
        if pm is None:
            raise ValidationError({"routes": f"Unknown physical model {route['physical_model_id']}."})
        specs.append(services.RouteSpec(pm, route["priority"], route["weight"], route["enabled"]))
    return specs


@router.get("/logical-models", response=list[LogicalModelOut], tags=["logical models"])
def logical_model_list(request):
    return selectors.logical_model_list(organization_id=_org_id(request))


@router.post("/logical-models", response={201: LogicalModelOut}, tags=["logical models"])
def logical_model_create(request, payload: LogicalModelIn):
    data = payload.dict()
    routes = _route_specs(request, data.pop("routes"))
    created = services.logical_model_create(organization=request.auth.organization, routes=routes, **data)
    return Status(201, _logical_model(request, created.pk))


@router.get("/logical-models/{logical_model_id}", response=LogicalModelOut, tags=["logical models"])
def logical_model_get(request, logical_model_id: DbId):
    return _logical_model(request, logical_model_id)


@router.patch("/logical-models/{logical_model_id}", response=LogicalModelOut, tags=["logical models"])
def logical_model_update(request, logical_model_id: DbId, payload: LogicalModelPatch):
    data = payload.dict(exclude_unset=True)
    data.pop("routes", None)
    # Route fields get their defaults even in a PATCH: the list replaces every route.
    routes = None if payload.routes is None else [r.dict() for r in payload.routes]
    services.logical_model_update(
        logical_model=_logical_model(request, logical_model_id),
        routes=None if routes is None else _route_specs(request, routes),
        **data,
    )
    return _logical_model(request, logical_model_id)


@router.delete("/logical-models/{logical_model_id}", response={204: None}, tags=["logical models"])
def logical_model_delete(request, logical_model_id: DbId):
    services.logical_model_delete(logical_model=_logical_model(request, logical_model_id))
    return Status(204, None)


# --- virtual endpoints ----------------------------------------------------------------
# allowed_models are logical model NAMES (what clients put in "model"), not ids; an
# unknown name is a 400 naming it.

def endpoint_for(request, ve_id: str) -> VirtualEndpoint:
    return get_object_or_404(selectors.endpoint_list(organization_id=_org_id(request)), public_id=ve_id)


def _models_named(request, names: list[str], field: str = "allowed_models") -> list[LogicalModel]:
    found, unknown = selectors.logical_models_by_name(organization_id=_org_id(request), names=names)
    if unknown:
        raise ValidationError({field: f"Unknown logical model {unknown[0]!r}."})
    return found


def _endpoint_fields(data: dict) -> dict:
    data = {k: v for k, v in data.items() if not (k.startswith("checkout_") and v is None)}
    if "low_balance_threshold" in data:
        data["low_balance_threshold"] = credits_to_micros_exact(data["low_balance_threshold"] or 0)
    return data


@router.get("/virtual-endpoints", response=list[EndpointOut], tags=["virtual endpoints"])
def endpoint_list(request):
    return selectors.endpoint_list(organization_id=_org_id(request))


@router.post("/virtual-endpoints", response={201: EndpointOut}, tags=["virtual endpoints"])
def endpoint_create(request, payload: EndpointIn):
    data = _endpoint_fields(payload.dict())
    models = _models_named(request, data.pop("allowed_models"))
    created = services.endpoint_create(organization=request.auth.organization, allowed_models=models, **data)
    return Status(201, endpoint_for(request, created.public_id))


@router.get("/virtual-endpoints/{ve_id}", response=EndpointOut, tags=["virtual endpoints"])
def endpoint_get(request, ve_id: str):
    return endpoint_for(request, ve_id)


@router.patch("/virtual-endpoints/{ve_id}", response=EndpointOut, tags=["virtual endpoints"])
def endpoint_update(request, ve_id: str, payload: EndpointPatch):
    data = _endpoint_fields(payload.dict(exclude_unset=True))
    names = data.pop("allowed_models", None)
    services.endpoint_update(
        endpoint=endpoint_for(request, ve_id),
        allowed_models=None if names is None else _models_named(request, names),
        **data,
    )
    return endpoint_for(request, ve_id)


@router.delete("/virtual-endpoints/{ve_id}", response={204: None}, tags=["virtual endpoints"])
def endpoint_delete(request, ve_id: str):
    """Only a VE without ledger entries can be deleted (409 otherwise: suspend it instead)."""
    services.endpoint_delete(endpoint=endpoint_for(request, ve_id))
    return Status(204, None)


# --- access keys ----------------------------------------------------------------------

def _key(request, ve_id: str, key_id: DbId) -> AccessKey:
    return get_object_or_404(selectors.key_list(endpoint=endpoint_for(request, ve_id)), pk=key_id)


def _key_fields(request, data: dict) -> dict:
    if data.get("credit_limit") is not None:
        data["credit_limit"] = credits_to_micros_exact(data["credit_limit"])
    if data.get("allowed_models") is not None:
        data["allowed_models"] = _models_named(request, data["allowed_models"])
    return data


@router.get("/virtual-endpoints/{ve_id}/keys", response=list[KeyOut], tags=["access keys"])
def key_list(request, ve_id: str):
    return selectors.key_list(endpoint=endpoint_for(request, ve_id))


@router.post("/virtual-endpoints/{ve_id}/keys", response={201: KeyCreatedOut}, tags=["access keys"])
def key_create(request, ve_id: str, payload: KeyIn):
    """The response carries the secret `key` once; it is stored only as a SHA-256 hash."""
    endpoint = endpoint_for(request, ve_id)
    key, secret = services.key_create(virtual_endpoint=endpoint, **_key_fields(request, payload.dict()))
    key.key = secret
    return Status(201, key)


@router.get("/virtual-endpoints/{ve_id}/keys/{key_id}", response=KeyOut, tags=["access keys"])
def key_get(request, ve_id: str, key_id: DbId):
    return _key(request, ve_id, key_id)


@router.patch("/virtual-endpoints/{ve_id}/keys/{key_id}", response=KeyOut, tags=["access keys"])
def key_update(request, ve_id: str, key_id: DbId, payload: KeyPatch):
    data = _key_fields(request, payload.dict(exclude_unset=True))
    return services.key_update(key=_key(request, ve_id, key_id), **data)


@router.post("/virtual-endpoints/{ve_id}/keys/{key_id}/revoke", response=KeyOut, tags=["access keys"])
def key_revoke(request, ve_id: str, key_id: DbId):
    return services.key_revoke(key=_key(request, ve_id, key_id))


@router.delete("/virtual-endpoints/{ve_id}/keys/{key_id}", response={204: None}, tags=["access keys"])
def key_delete(request, ve_id: str, key_id: DbId):
    services.key_delete(key=_key(request, ve_id, key_id))
    return Status(204, None)
