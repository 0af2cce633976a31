"""Small factories for tests: plain functions with sensible defaults, keyword overrides."""

from __future__ import annotations

import itertools
from decimal import Decimal

from django.contrib.auth import get_user_model

from billing.ledger import post_entry
from billing.money import to_micros
from routing.models import (
    LogicalModel,
    Membership,
    Organization,
    PhysicalModel,
    Provider,
    Role,
    Route,
    VirtualEndpoint,
)
from routing.services import config_changed, key_create

_seq = itertools.count(1)


def make_org(name: str | None = None, **kw) -> Organization:
    n = next(_seq)
    return Organization.objects.create(name=name or f"Org {n}", slug=kw.pop("slug", f"org-{n}"), **kw)


def make_user(email: str | None = None, password: str = "pw-for-tests-123", **kw):
    email = email or f"user{next(_seq)}@example.com"
    return get_user_model().objects.create_user(username=email, email=email, password=password, **kw)


def make_member(org: Organization, role: str = Role.OWNER, user=None) -> Membership:
    return Membership.objects.create(user=user or make_user(), organization=org, role=role)


def make_provider(org: Organization, *, base_url: str = "http://127.0.0.1:9/v1", api_key: str = "sk-test",
                  kind: str = "openai_compatible", **kw) -> Provider:
    provider = Provider(organization=org, name=kw.pop("name", f"provider-{next(_seq)}"), kind=kind,
                        base_url=base_url, **kw)
    provider.set_credentials(api_key)
    provider.save()
    config_changed()
    return provider


def make_physical_model(provider: Provider, upstream_model: str = "fake-model", **kw) -> PhysicalModel:
    kw.setdefault("input_cost_per_mtok", Decimal("1"))
    kw.setdefault("output_cost_per_mtok", Decimal("2"))
    pm = PhysicalModel.objects.create(provider=provider, upstream_model=upstream_model, **kw)
    config_changed()
    return pm


def make_logical_model(org: Organization, name: str = "chat", routes=(), **kw) -> LogicalModel:
    """routes: physical models, or (physical_model, priority, weight) tuples."""
    lm = LogicalModel.objects.create(organization=org, name=name, **kw)
    for route in routes:
        pm, priority, weight = route if isinstance(route, tuple) else (route, 0, Decimal("1"))
        Route.objects.create(logical_model=lm, physical_model=pm, priority=priority, weight=Decimal(str(weight)))
    config_changed()
    return lm


def make_ve(org: Organization, *, name: str | None = None, models=(), credits: str | int = 0, **kw) -> VirtualEndpoint:
    ve = VirtualEndpoint.objects.create(organization=org, name=name or f"ve-{next(_seq)}", **kw)
    if models:
        ve.allowed_models.set(models)
    if credits:
        grant(ve, credits)
    config_changed()
    ve.refresh_from_db()
    return ve


def grant(ve: VirtualEndpoint, credits: str | int) -> None:
    post_entry(virtual_endpoint=ve, kind="grant", amount=to_micros(str(credits)),
               idempotency_key=f"test-grant-{next(_seq)}", note="test grant")


def make_key(ve: VirtualEndpoint, name: str = "test key", **kw):
    """Returns (AccessKey, secret)."""
    return key_create(virtual_endpoint=ve, name=name, **kw)
