"""Writes to routing configuration. Every write that changes what the gateway serves
ends with `config_changed()`, which tells every gateway process to rebuild its snapshot."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from routing.models import AccessKey, ConfigVersion, VirtualEndpoint, hash_secret

_config_listeners: list = []


def on_config_changed(listener) -> None:
    """Register a callable run after the commit of any configuration change (the gateway's
    cache publishes the new version to Redis here)."""
    if listener not in _config_listeners:
        _config_listeners.append(listener)


def config_changed() -> None:
    updated = ConfigVersion.objects.filter(pk=1).update(version=F("version") + 1)
    if not updated:
        ConfigVersion.objects.get_or_create(pk=1, defaults={"version": 1})
    for listener in list(_config_listeners):
        transaction.on_commit(listener)


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
    config_changed()
    return key, secret
