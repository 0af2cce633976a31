"""Reads of routing configuration, always scoped to one organization.

Every lookup by id filters by organization first, so an id from another organization
behaves exactly like an id that does not exist (the API answers 404 for both).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from routing.models import (
    AccessKey,
    LogicalModel,
    ManagementToken,
    PhysicalModel,
    Provider,
    Route,
    VirtualEndpoint,
    hash_secret,
)


def management_token_authenticate(secret: str) -> ManagementToken | None:
    """The live (not revoked) token with this secret, or None. Marks it used (once a minute)."""
    token = (
        ManagementToken.objects.select_related("organization")
        .filter(token_hash=hash_secret(secret), revoked=False)
        .first()
    )
    if token is not None:
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ManagementToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def provider_list(*, organization_id: int) -> QuerySet[Provider]:
    return Provider.objects.filter(organization_id=organization_id)


def physical_model_list(*, organization_id: int, provider_id: int | None = None) -> QuerySet[PhysicalModel]:
    rows = PhysicalModel.objects.select_related("provider").filter(provider__organization_id=organization_id)
    if provider_id is not None:
        rows = rows.filter(provider_id=provider_id)
    return rows


def logical_model_list(*, organization_id: int) -> QuerySet[LogicalModel]:
    routes = Prefetch("routes", queryset=Route.objects.order_by("priority", "-weight", "id"))
    return LogicalModel.objects.filter(organization_id=organization_id).prefetch_related(routes)


def logical_models_by_name(*, organization_id: int, names: Iterable[str]) -> tuple[list[LogicalModel], list[str]]:
    """(found models, unknown names), in the order given."""
    names = list(dict.fromkeys(names))
    found = {m.name: m for m in LogicalModel.objects.filter(organization_id=organization_id, name__in=names)}
    return [found[n] for n in names if n in found], [n for n in names if n not in found]


def endpoint_list(*, organization_id: int) -> QuerySet[VirtualEndpoint]:
    return VirtualEndpoint.objects.filter(organization_id=organization_id).prefetch_related("allowed_models")


def key_list(*, endpoint: VirtualEndpoint) -> QuerySet[AccessKey]:
    return AccessKey.objects.filter(virtual_endpoint=endpoint).prefetch_related("allowed_models")
