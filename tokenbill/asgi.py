"""ASGI entry point.

The gateway is a plain ASGI application mounted ahead of Django: its hot path skips
Django's request/response machinery entirely (see gateway/app.py and the README's
benchmark). Everything else (console, admin, management API, checkout, websockets)
goes through the normal Django and Channels stack.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbill.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi = get_asgi_application()

from tokenbill.security import assert_production_ready  # noqa: E402

assert_production_ready()

from tokenbill.routing import build_application  # noqa: E402

application = build_application(django_asgi)
