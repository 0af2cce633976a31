"""Routing services: validation, write-only credentials, config version moves on every write."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from billing.ledger import ledger_sums
from routing import services
from routing.models import ConfigVersion, Route
from tests import factories


def _version() -> int:
    row = ConfigVersion.objects.filter(pk=1).first()
    return row.version if row else 0


def test_every_configuration_write_moves_the_config_version(org):
    # given
    before = _version()
    # when
    provider = services.provider_create(organization=org, name="p", kind="openai", base_url="https://x.test/v1")
    pm = services.physical_model_create(provider=provider, upstream_model="m")
    lm = services.logical_model_create(organization=org, name="l", routes=[services.RouteSpec(pm)])
    ve = services.endpoint_create(organization=org, name="e", allowed_models=[lm])
    key, _ = services.key_create(virtual_endpoint=ve, name="k")
    services.key_revoke(key=key)
    # then
    assert _version() == before + 6


def test_config_listeners_run_after_commit(org, django_capture_on_commit_callbacks):
    # given
    calls = []

    def listener(change):
        calls.append(change.full)

    services.on_config_changed(listener)
    try:
        # when
        with django_capture_on_commit_callbacks(execute=True):
            services.provider_create(organization=org, name="p", kind="openai", base_url="https://x.test/v1")
            assert calls == []  # not before the commit
    finally:
        services._config_listeners.remove(listener)
    # then
    assert calls == [True]  # a provider is shared state: a full rebuild


def test_provider_update_keeps_credentials_unless_a_new_one_is_given(org):
    provider = services.provider_create(organization=org, name="p", kind="openai", base_url="https://x.test/v1",
                                        api_key="sk-one")
    services.provider_update(provider=provider, api_key="", enabled=False)
    provider.refresh_from_db()
    assert provider.get_credentials() == "sk-one" and not provider.enabled
    services.provider_update(provider=provider, api_key="sk-two")
    provider.refresh_from_db()
    assert provider.get_credentials() == "sk-two"


def test_update_refuses_unknown_fields(org):
    provider = factories.make_provider(org)
    with pytest.raises(ValidationError):
        services.provider_update(provider=provider, organization_id=999)


def test_routes_must_match_organization_and_modality(org):
    other = factories.make_org()
    foreign = factories.make_physical_model(factories.make_provider(other))
    embed = factories.make_physical_model(factories.make_provider(org), "emb", modality="embedding")
    with pytest.raises(ValidationError):
        services.logical_model_create(organization=org, name="a", routes=[services.RouteSpec(foreign)])
    with pytest.raises(ValidationError):
        services.logical_model_create(organization=org, name="b", routes=[services.RouteSpec(embed)])
    assert not Route.objects.exists()


def test_changing_modality_under_existing_routes_is_refused(org):
    pm = factories.make_physical_model(factories.make_provider(org))
    lm = services.logical_model_create(organization=org, name="l", routes=[services.RouteSpec(pm)])
    with pytest.raises(ValidationError):
        services.logical_model_update(logical_model=lm, modality="embedding")
    with pytest.raises(ValidationError):
        services.physical_model_update(physical_model=pm, modality="embedding")


def test_endpoint_allowed_models_must_be_of_the_same_organization(org):
    foreign = factories.make_logical_model(factories.make_org(), "theirs")
    with pytest.raises(ValidationError):
        services.endpoint_create(organization=org, name="e", allowed_models=[foreign])


def test_grant_credits_goes_through_the_ledger_once_per_key(org):
    ve = factories.make_ve(org)
    first = services.grant_credits(virtual_endpoint=ve, credits="12.5", idempotency_key="g")
    again = services.grant_credits(virtual_endpoint=ve, credits="12.5", idempotency_key="g")
    generated = services.grant_credits(virtual_endpoint=ve, credits=Decimal("1"))
    ve.refresh_from_db()
    assert first.created and not again.created and generated.entry.idempotency_key.startswith("grant:")
    assert ve.credit_budget == 13_500_000 == ledger_sums(ve.pk)[0]
    with pytest.raises(ValidationError):
        services.grant_credits(virtual_endpoint=ve, credits="0")
    with pytest.raises(ValidationError):
        services.grant_credits(virtual_endpoint=ve, credits="1.0000001")


def test_management_token_secret_is_returned_once_and_stored_hashed(org):
    token, secret = services.management_token_create(organization=org)
    assert secret.startswith("tbm_") and secret not in (token.token_hash, token.prefix)
    from routing.selectors import management_token_authenticate

    assert management_token_authenticate(secret) == token
    services.management_token_revoke(token=token)
    assert management_token_authenticate(secret) is None
