"""The public pricing page at 500 models (issue: "under 100 ms with 500 models").

Usage: .venv/bin/python bench/pricing_page.py [models]   (uses DATABASE_URL when set,
else SQLite; creates and drops its own test database). Prints the median and worst of 30
visits of the HTML page and of its JSON form, cold (rendered: the first visit after a
configuration change) and warm (from the cache), and the SQL queries per visit.
"""

import os
import statistics
import sys
import time
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbill.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402


def main(n: int) -> None:
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        from billing.rates import rate_set
        from routing.models import LogicalModel, Organization, PhysicalModel, Provider, Route
        from routing.services import config_changed

        org = Organization.objects.create(name="Bench shop", slug="bench-shop", pricing_public=True)
        for cur, rate in (("USD", "100"), ("EUR", "110"), ("GBP", "125")):
            rate_set(org, cur, rate)
        provider = Provider(organization=org, name="p", kind="openai_compatible", base_url="http://127.0.0.1:9/v1")
        provider.set_credentials("sk-bench")
        provider.save()
        pms = PhysicalModel.objects.bulk_create(
            PhysicalModel(provider=provider, upstream_model=f"pm-{i}", input_cost_per_mtok=Decimal(i % 7 + 1),
                          output_cost_per_mtok=Decimal(i % 11 + 2)) for i in range(n))
        lms = LogicalModel.objects.bulk_create(
            LogicalModel(organization=org, name=f"model-{i:04d}", description=f"Model number {i}",
                         output_price_per_mtok=Decimal(i) if i % 2 else None) for i in range(n))
        Route.objects.bulk_create(Route(logical_model=lm, physical_model=pm) for lm, pm in zip(lms, pms, strict=True))
        client = Client(HTTP_HOST="localhost")
        for label, url in (("html", "/pricing/bench-shop"), ("json", "/pricing/bench-shop?format=json")):
            client.get(url)  # load the templates once
            for state in ("cold", "warm"):
                times = []
                for _ in range(30):
                    if state == "cold":
                        config_changed()  # every visit renders, as after each configuration change
                    with CaptureQueriesContext(connection) as queries:
                        t0 = time.perf_counter()
                        response = client.get(url)
                        times.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200
                print(f"pricing page {label:4s} {state} {n} models: median {statistics.median(times):.1f} ms, "
                      f"worst {max(times):.1f} ms, {len(queries)} queries, {len(response.content) // 1024} KiB "
                      f"({connection.vendor})")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
