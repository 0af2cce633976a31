"""Who is calling: the VE named by the URL (path or host) and the access key.

Everything is read from the in-process snapshot; nothing here touches SQL (a miss is
loaded by routing.cache.RoutingCache.resolve_miss, off the event loop)."""

from __future__ import annotations

import hashlib
import time

from django.conf import settings

from gateway import errors
from routing.snapshot import AccessKeySnap, LogicalModelSnap, Snapshot, VirtualEndpointSnap


def split_target(path: str, host: str) -> tuple[str | None, str] | None:
    """(VE public id or None, path under the VE) for a gateway request, None otherwise.

    /v1/...            -> (None, "/v1/...")       the key alone names the VE
    /ve_abc/v1/...     -> ("ve_abc", "/v1/...")
    host ve_abc.ve.<GATEWAY_BASE_DOMAIN>, any path -> ("ve_abc", path)
    """
    if host:
        suffix = ".ve." + settings.GATEWAY_BASE_DOMAIN
        name = host.split(":", 1)[0].lower()
        if name.endswith(suffix):
            ve_id = name[: -len(suffix)]
            if ve_id.startswith("ve_") and "." not in ve_id:
                return ve_id, path
    if path.startswith("/v1/") or path == "/v1":
        return None, path
    if path.startswith("/ve_"):
        ve_id, sep, rest = path[1:].partition("/")
        if sep and (rest.startswith("v1/") or rest == "v1"):
            return ve_id, "/" + rest
    return None


def secret_from(authorization: str, api_key: str, x_api_key: str) -> str:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return (api_key or x_api_key).strip()


def key_hash(secret: str) -> str | None:
    return hashlib.sha256(secret.encode()).hexdigest() if secret else None


def authenticate(snapshot: Snapshot, secret: str, ve_public_id: str | None) -> tuple[VirtualEndpointSnap, AccessKeySnap]:
    url_ve = None
    if ve_public_id is not None:
        url_ve = snapshot.endpoints_by_public_id.get(ve_public_id)
        if url_ve is None:
            raise errors.not_found("Unknown virtual endpoint.", code="unknown_endpoint")
    if not secret:
        raise errors.unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    key = snapshot.keys_by_hash.get(hashlib.sha256(secret.encode()).hexdigest())
    if key is None or not key.enabled:
        raise errors.unauthorized()
    if key.expires_at is not None and key.expires_at.timestamp() <= time.time():
        raise errors.unauthorized("This API key has expired.")
    if url_ve is not None and key.virtual_endpoint_id != url_ve.id:
        raise errors.unauthorized()  # a key of another VE: same answer as an unknown key
    ve = snapshot.endpoints_by_id.get(key.virtual_endpoint_id)
    if ve is None:
        raise errors.unauthorized()
    if ve.status != "active":
        raise errors.forbidden("This virtual endpoint is suspended.", code="endpoint_suspended")
    return ve, key


def model_names(snapshot: Snapshot, ve: VirtualEndpointSnap, key: AccessKeySnap) -> list[str]:
    names = ve.allowed_model_names
    if key.allowed_model_names:
        names = names & key.allowed_model_names
    org = ve.organization.id
    return sorted(n for n in names if (org, n) in snapshot.logical_models)


def resolve_model(snapshot: Snapshot, ve: VirtualEndpointSnap, key: AccessKeySnap, name: str) -> LogicalModelSnap:
    model = snapshot.logical_models.get((ve.organization.id, name))
    if model is None:
        raise errors.not_found(f"The model '{name}' does not exist.", code="model_not_found", param="model")
    if name not in ve.allowed_model_names or (key.allowed_model_names and name not in key.allowed_model_names):
        raise errors.forbidden(f"This key may not use the model '{name}'.")
    return model
