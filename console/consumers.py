"""Websocket for the dashboard's live feed: joins the organization's group, relays events."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from console.access import SESSION_ORG_KEY
from console.live import requests_group
from routing.models import Membership


class LiveFeedConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self):
        org_id = await self._org_id()
        if org_id is None:
            await self.close(code=4403)
            return
        self.group = requests_group(org_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def request_logged(self, event):
        await self.send_json({"type": "request", "request": event["payload"]})

    async def request_batch(self, event):
        for payload in event["payloads"]:
            await self.send_json({"type": "request", "request": payload})

    @database_sync_to_async
    def _org_id(self) -> int | None:
        """The session's current organization, if the user is (still) a member of it."""
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return None
        session = self.scope.get("session") or {}
        wanted = session.get(SESSION_ORG_KEY)
        memberships = Membership.objects.filter(user=user)
        if wanted is not None:
            memberships = memberships.filter(organization_id=wanted)
        return memberships.order_by("organization__name").values_list("organization_id", flat=True).first()
