from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self):
        from django.conf import settings

        from billing.ledger import on_posted

        if settings.REDIS_URL:
            # Grants, top-ups and refunds (posted by the console, the API, Stripe webhooks,
            # in any process) must reach the Redis budget the gateway checks.
            on_posted(_grant_to_redis)

        # Low-balance alerts follow every ledger post (issue 5, billing/alerts.py).
        from billing import alerts

        alerts.connect()


def _grant_to_redis(entry) -> None:
    from billing.budget import get_budget

    budget = get_budget()
    if getattr(budget, "name", "") == "redis":
        budget.grant_applied(entry)
