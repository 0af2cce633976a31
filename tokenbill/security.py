"""Refuse to serve production with development secrets.

Called by every production entry point (ASGI, Celery) rather than at settings import,
so tests and management commands can load settings without a configured secret.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def assert_production_ready() -> None:
    if settings.DEBUG:
        return
    problems = []
    if settings.SECRET_KEY == settings.INSECURE_SECRET_KEY or len(settings.SECRET_KEY) < 32:
        problems.append("SECRET_KEY is unset or insecure (set a random value of 32+ characters)")
    if not settings.FIELD_ENCRYPTION_KEY:
        problems.append("FIELD_ENCRYPTION_KEY is unset (generate one with `python manage.py generate_encryption_key`)")
    if settings.STRIPE_SECRET_KEY and not settings.STRIPE_WEBHOOK_SECRET:
        problems.append("STRIPE_SECRET_KEY is set without STRIPE_WEBHOOK_SECRET: webhooks could not be verified")
    if getattr(settings, "CHECKOUT_TEST_MODE", False) and not settings.STRIPE_SECRET_KEY:
        problems.append(
            "checkout test mode is on (end users could add credits without paying): "
            "set STRIPE_SECRET_KEY, or CHECKOUT_TEST_MODE=0"
        )
    if problems:
        raise ImproperlyConfigured(
            "TokenBill refuses to start with DEBUG off: " + "; ".join(problems) + ". Set DEBUG=1 for local development."
        )
