"""Top-level ASGI dispatch: gateway paths and hosts to the gateway app, the rest to Django."""

from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter


def build_application(django_asgi):
    from console.routing import websocket_urlpatterns
    from gateway.app import GatewayApp

    gateway = GatewayApp()
    websockets = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))

    async def http(scope, receive, send):
        if gateway.claims(scope):
            await gateway(scope, receive, send)
        else:
            await django_asgi(scope, receive, send)

    async def lifespan(scope, receive, send):
        await gateway.lifespan(scope, receive, send)

    return ProtocolTypeRouter({"http": http, "websocket": websockets, "lifespan": lifespan})
