"""Database constraints guard what they can, even when code skips validation."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from billing.models import LedgerEntry
from routing.models import LogicalModel, Provider, Route, VirtualEndpoint
from tests import factories


def _violates(fn) -> bool:
    try:
        with transaction.atomic():
            fn()
    except IntegrityError:
        return True
    return False


def test_names_are_unique_per_organization(org):
    # given
    provider = factories.make_provider(org, name="P")
    factories.make_logical_model(org, "chat")
    factories.make_ve(org, name="E")
    other = factories.make_org()
    # then: same names in the same organization are refused...
    assert _violates(lambda: Provider.objects.create(organization=org, name="P", kind="openai", base_url="http://x"))
    assert _violates(lambda: LogicalModel.objects.create(organization=org, name="chat"))
    assert _violates(lambda: VirtualEndpoint.objects.create(organization=org, name="E"))
    assert _violates(lambda: factories.make_physical_model(provider, "fake-model") and
                     factories.make_physical_model(provider, "fake-model"))
    # ...and allowed in another organization
    assert not _violates(lambda: LogicalModel.objects.create(organization=other, name="chat"))
    assert not _violates(lambda: VirtualEndpoint.objects.create(organization=other, name="E"))


def test_route_weight_cannot_be_negative_and_routes_are_unique(org):
    pm = factories.make_physical_model(factories.make_provider(org))
    lm = factories.make_logical_model(org)
    assert _violates(lambda: Route.objects.create(logical_model=lm, physical_model=pm, weight=Decimal("-1")))
    Route.objects.create(logical_model=lm, physical_model=pm)
    assert _violates(lambda: Route.objects.create(logical_model=lm, physical_model=pm))


def test_spend_can_never_exceed_budget_in_the_database(org):
    ve = factories.make_ve(org, credits=1)
    assert _violates(lambda: VirtualEndpoint.objects.filter(pk=ve.pk).update(credit_spend=1_000_001))
    assert not _violates(lambda: VirtualEndpoint.objects.filter(pk=ve.pk).update(credit_spend=1_000_000))


def test_idempotency_keys_are_unique_and_amount_signs_checked(org):
    ve = factories.make_ve(org)
    LedgerEntry.objects.create(virtual_endpoint=ve, kind="grant", amount=1, idempotency_key="same")
    assert _violates(lambda: LedgerEntry.objects.create(virtual_endpoint=ve, kind="grant", amount=1,
                                                        idempotency_key="same"))
    assert _violates(lambda: LedgerEntry.objects.create(virtual_endpoint=ve, kind="charge", amount=-5,
                                                        idempotency_key="negative-charge"))
    assert not _violates(lambda: LedgerEntry.objects.create(virtual_endpoint=ve, kind="adjustment", amount=-5,
                                                            idempotency_key="negative-adjustment"))


def test_key_credit_limit_cannot_be_negative(org):
    ve = factories.make_ve(org)
    key, _ = factories.make_key(ve)
    from routing.models import AccessKey

    assert _violates(lambda: AccessKey.objects.filter(pk=key.pk).update(credit_limit=-1))


def test_ve_public_ids_look_like_ve_and_are_unique(org):
    ves = [factories.make_ve(org) for _ in range(5)]
    ids = {ve.public_id for ve in ves}
    assert len(ids) == 5 and all(i.startswith("ve_") for i in ids)
    with pytest.raises(IntegrityError), transaction.atomic():
        VirtualEndpoint.objects.create(organization=org, name="dup-id", public_id=ves[0].public_id)
