"""The demo that `make run` serves: idempotent, so running it twice leaves the same state.

Rows are looked up by their natural names and created only when missing; the demo
access key's secret is kept in DATA_DIR/demo_key.txt (the database stores only its hash)
so the printed curl line keeps working across runs. A key is created only when that file
or its key is missing.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from billing.money import format_credits_human
from billing.rates import rate_in_force, rate_set
from routing import services
from routing.models import (
    AccessKey,
    LogicalModel,
    Membership,
    Organization,
    PhysicalModel,
    Provider,
    Role,
    VirtualEndpoint,
    hash_secret,
)

ORG_NAME, ORG_SLUG = "Demo Shop", "demo-shop"
EMAIL = "demo@tokenbill.local"
PASSWORD = "tokenbill-demo"
PROVIDER_NAME = "Local fake upstream"
LOGICAL_MODEL = "demo-chat"
ENDPOINT_NAME = "Demo endpoint"
KEY_NAME = "Demo key"
GRANT_CREDITS = Decimal("1000")
GRANT_KEY = "demo-initial-grant"
USD_RATE = Decimal("100000")
# Costs in USD per 1M tokens; sale prices in credits per 1M tokens (2x the cost at 1 USD = 100,000 credits).
PHYSICAL_MODELS = [
    ("fake-mini", Decimal("0.005"), Decimal("0.02")),
    ("fake-large", Decimal("0.01"), Decimal("0.04")),
]
SALE_INPUT, SALE_OUTPUT = Decimal("1000"), Decimal("4000")


def demo_key_path() -> Path:
    return Path(settings.DATA_DIR) / "demo_key.txt"


class Command(BaseCommand):
    help = "Create (or refresh) the demo organization, login, provider, models, endpoint, credits and key."

    def add_arguments(self, parser):
        parser.add_argument("--upstream-url", default="http://127.0.0.1:8001/v1",
                            help="Base URL of the fake upstream (python manage.py fake_upstream).")
        parser.add_argument("--base-url", default=None,
                            help="Where TokenBill listens, for the printed curl line (default PUBLIC_BASE_URL).")

    def handle(self, *args, upstream_url, base_url, **options):
        with transaction.atomic():
            org = _organization()
            _login(org)
            logical = _models(org, _provider(org, upstream_url))
            endpoint = _endpoint(org, logical)
            services.grant_credits(virtual_endpoint=endpoint, credits=GRANT_CREDITS, note="Demo credits",
                                   idempotency_key=GRANT_KEY)
            _rates(org)
            secret = _key(endpoint)
        endpoint.refresh_from_db()
        base = (base_url or settings.PUBLIC_BASE_URL).rstrip("/")
        self.stdout.write(f"Demo login: {EMAIL} / {PASSWORD}")
        self.stdout.write(f"Demo endpoint: {endpoint.public_id} (balance {format_credits_human(endpoint.balance)} credits)")
        self.stdout.write(f"Demo key: {secret}")
        self.stdout.write(curl_line(base, endpoint.public_id, secret))


def curl_line(base: str, ve_id: str, secret: str) -> str:
    body = '{"model": "' + LOGICAL_MODEL + '", "messages": [{"role": "user", "content": "Hello, TokenBill!"}]}'
    return (f"curl {base}/{ve_id}/v1/chat/completions -H 'Authorization: Bearer {secret}' "
            f"-H 'Content-Type: application/json' -d '{body}'")


def _organization() -> Organization:
    org = Organization.objects.filter(slug=ORG_SLUG).first()
    return org or services.organization_create(name=ORG_NAME, slug=ORG_SLUG)


def _login(org: Organization) -> None:
    """The demo owner is also a superuser, so the same login opens /admin/ in the demo."""
    User = get_user_model()
    user, _ = User.objects.get_or_create(username=EMAIL, defaults={"email": EMAIL})
    user.is_staff = user.is_superuser = True
    if not user.check_password(PASSWORD):
        user.set_password(PASSWORD)
    user.save()
    Membership.objects.update_or_create(user=user, organization=org, defaults={"role": Role.OWNER})


def _provider(org: Organization, upstream_url: str) -> Provider:
    provider = Provider.objects.filter(organization=org, name=PROVIDER_NAME).first()
    if provider is None:
        return services.provider_create(organization=org, name=PROVIDER_NAME, kind="openai_compatible",
                                        base_url=upstream_url, api_key="fake-upstream-key", currency="USD",
                                        allow_private_network=True)  # the fake upstream is on loopback
    if provider.base_url != upstream_url or not provider.enabled or not provider.allow_private_network:
        services.provider_update(provider=provider, base_url=upstream_url, enabled=True, allow_private_network=True)
    return provider


def _models(org: Organization, provider: Provider) -> LogicalModel:
    physical = []
    for name, input_cost, output_cost in PHYSICAL_MODELS:
        pm = PhysicalModel.objects.filter(provider=provider, upstream_model=name).first()
        physical.append(pm or services.physical_model_create(
            provider=provider, upstream_model=name, input_cost_per_mtok=input_cost, output_cost_per_mtok=output_cost))
    logical = LogicalModel.objects.filter(organization=org, name=LOGICAL_MODEL).first()
    if logical is not None:
        return logical
    # Two tiers: fake-mini serves everything; fake-large takes over when it fails.
    routes = [services.RouteSpec(physical[0], priority=0), services.RouteSpec(physical[1], priority=1)]
    return services.logical_model_create(
        organization=org, name=LOGICAL_MODEL, description="Demo chat model on the local fake upstream",
        input_price_per_mtok=SALE_INPUT, output_price_per_mtok=SALE_OUTPUT, default_max_output_tokens=1024,
        routes=routes)


def _endpoint(org: Organization, logical: LogicalModel) -> VirtualEndpoint:
    endpoint = VirtualEndpoint.objects.filter(organization=org, name=ENDPOINT_NAME).first()
    if endpoint is None:
        return services.endpoint_create(organization=org, name=ENDPOINT_NAME, allowed_models=[logical],
                                        low_balance_threshold=100 * 1_000_000)
    if not endpoint.allowed_models.filter(pk=logical.pk).exists():
        endpoint.allowed_models.add(logical)
        services.config_changed()
    return endpoint


def _rates(org: Organization) -> None:
    """USD = 100,000 credits, as the operator default and as the demo organization's own rate."""
    for organization in (None, org):
        current = rate_in_force(organization.pk if organization else None, "USD")
        if current is None or current.credits_per_unit != USD_RATE or (organization and current.organization_id is None):
            rate_set(organization, "USD", USD_RATE)


def _key(endpoint: VirtualEndpoint) -> str:
    path = demo_key_path()
    secret = path.read_text().strip() if path.exists() else ""
    if secret and AccessKey.objects.filter(virtual_endpoint=endpoint, key_hash=hash_secret(secret)).exists():
        return secret
    # The file or its key is gone: replace the demo key so exactly one exists.
    AccessKey.objects.filter(virtual_endpoint=endpoint, name=KEY_NAME).delete()
    _, secret = services.key_create(virtual_endpoint=endpoint, name=KEY_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret
