"""Create the benchmark's world in the bench database and print the access key.

Usage (bench.py runs it): python bench/setup_world.py <upstream base url>
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbill.settings")

import django  # noqa: E402

django.setup()

from billing.ledger import post_entry  # noqa: E402
from billing.money import to_micros  # noqa: E402
from billing.rates import rate_set  # noqa: E402
from routing.models import LogicalModel, Organization, PhysicalModel, Provider, Route, VirtualEndpoint  # noqa: E402
from routing.services import config_changed, key_create  # noqa: E402


def main(upstream: str) -> None:
    org = Organization.objects.create(name="Bench", slug="bench")
    rate_set(org, "USD", "100000")
    provider = Provider(organization=org, name="fake", kind="openai_compatible", base_url=upstream)
    provider.set_credentials("sk-bench")
    provider.save()
    pm = PhysicalModel.objects.create(provider=provider, upstream_model="fake-model",
                                      input_cost_per_mtok="0.1", output_cost_per_mtok="0.2")
    lm = LogicalModel.objects.create(organization=org, name="bench")
    Route.objects.create(logical_model=lm, physical_model=pm)
    ve = VirtualEndpoint.objects.create(organization=org, name="bench")
    ve.allowed_models.set([lm])
    post_entry(virtual_endpoint=ve, kind="grant", amount=to_micros("1000000000"), idempotency_key="bench-grant",
               note="benchmark")
    config_changed()
    _, secret = key_create(virtual_endpoint=ve, name="bench")
    print(secret)


if __name__ == "__main__":
    main(sys.argv[1])
