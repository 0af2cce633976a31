"""The gateway: a plain ASGI application (placeholder until the gateway issue lands)."""

from __future__ import annotations


class GatewayApp:
    def claims(self, scope) -> bool:
        return False

    async def __call__(self, scope, receive, send):  # pragma: no cover - placeholder
        raise NotImplementedError

    async def lifespan(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
