from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        # Low-balance alerts follow every ledger post (issue 5, billing/alerts.py).
        from billing import alerts

        alerts.connect()
