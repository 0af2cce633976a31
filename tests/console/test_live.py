"""The live feed: a websocket per console tab, one channel-layer group per organization."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from console.access import SESSION_ORG_KEY
from console.live import apublish_request, publish_request, request_payload, requests_group
from console.routing import websocket_urlpatterns
from tests import factories


class _Session(dict):
    pass


def _communicator(user, org_id=None):
    session = _Session()
    if org_id is not None:
        session[SESSION_ORG_KEY] = org_id
    app = URLRouter(websocket_urlpatterns)
    communicator = WebsocketCommunicator(app, "/ws/console/live/")
    communicator.scope["user"] = user
    communicator.scope["session"] = session
    return communicator


def test_group_name_is_per_organization():
    assert requests_group(7) == "org-7-requests"


@pytest.mark.django_db(transaction=True)
async def test_member_receives_own_org_events_only():
    # given two organizations and a member of the first, connected
    org, other = await sync_to_async(factories.make_org)(), await sync_to_async(factories.make_org)()
    member = await sync_to_async(factories.make_member)(org, role="viewer")
    user = await sync_to_async(lambda: member.user)()
    ws = _communicator(user, org.pk)
    connected, _ = await ws.connect()
    assert connected
    # when each organization publishes a request
    await apublish_request(other.pk, {"request_id": "theirs"})
    await apublish_request(org.pk, {"request_id": "mine", "model": "chat"})
    # then only the member's organization's event arrives
    message = await ws.receive_json_from(timeout=2)
    assert message == {"type": "request", "request": {"request_id": "mine", "model": "chat"}}
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_anonymous_or_foreign_session_is_refused():
    from django.contrib.auth.models import AnonymousUser

    ws = _communicator(AnonymousUser())
    connected, code = await ws.connect()
    assert not connected and code == 4403

    org, other = await sync_to_async(factories.make_org)(), await sync_to_async(factories.make_org)()
    member = await sync_to_async(factories.make_member)(org)
    user = await sync_to_async(lambda: member.user)()
    ws = _communicator(user, other.pk)  # session names an organization they do not belong to
    connected, _ = await ws.connect()
    assert not connected


def test_publish_from_sync_code_never_raises(db, monkeypatch):
    # billing calls this from a sync task: a broken channel layer must not fail it
    class Broken:
        async def group_send(self, *a, **kw):
            raise ConnectionError("redis down")

    monkeypatch.setattr("console.live.get_channel_layer", lambda: Broken())
    publish_request(1, {"request_id": "x"})


def test_payload_has_no_secrets(world):
    from tests.console.test_queries import make_logs

    log = make_logs(world["mine"], 1)[0]
    payload = request_payload(log)
    assert payload["ve"] == world["mine"]["ve"].name and payload["charge"] == "0.00"
    text = str(payload)
    assert "sk-test" not in text and "://" not in text and world["mine"]["key"].key_hash not in text


@pytest.mark.django_db(transaction=True)
async def test_flushed_log_rows_reach_the_feed():
    from django.utils import timezone

    from console.live import publish_rows

    org = await sync_to_async(factories.make_org)()
    ve = await sync_to_async(factories.make_ve)(org, name="Feed VE")
    member = await sync_to_async(factories.make_member)(org)
    user = await sync_to_async(lambda: member.user)()
    ws = _communicator(user, org.pk)
    assert (await ws.connect())[0]
    # when billing's log writer flushes a batch (from a worker thread)
    row = {"organization_id": org.pk, "virtual_endpoint_id": ve.pk, "request_id": "req_1", "logical_model_name": "chat",
           "status": "ok", "http_status": 200, "input_tokens": 3, "output_tokens": 4, "charge": 2_500_000,
           "started_at": timezone.now(), "latency_ms": 12}
    await sync_to_async(publish_rows)([row])
    # then the tab sees it, with the VE's name and the charge in credits
    message = (await ws.receive_json_from(timeout=2))["request"]
    assert (message["request_id"], message["ve"], message["charge"], message["tokens"]) == ("req_1", "Feed VE", "2.50", 7)
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_flushed_batch_is_one_message_per_organization(monkeypatch):
    from django.utils import timezone

    from console import live

    # given a batch with three rows of one organization and one of another
    org = await sync_to_async(factories.make_org)()
    other = await sync_to_async(factories.make_org)()
    ve = await sync_to_async(factories.make_ve)(org, name="Busy VE")
    ve_other = await sync_to_async(factories.make_ve)(other, name="Other VE")
    member = await sync_to_async(factories.make_member)(org)
    user = await sync_to_async(lambda: member.user)()
    ws = _communicator(user, org.pk)
    assert (await ws.connect())[0]
    sends = []
    layer = live.get_channel_layer()
    real_send = layer.group_send

    async def counting_send(group, message):
        sends.append(group)
        await real_send(group, message)

    monkeypatch.setattr(layer, "group_send", counting_send)

    def row(org_id, ve_id, n):
        return {"organization_id": org_id, "virtual_endpoint_id": ve_id, "request_id": f"req_{n}",
                "logical_model_name": "chat", "status": "ok", "http_status": 200, "charge": 0,
                "started_at": timezone.now(), "latency_ms": 1}

    # when it is published
    await sync_to_async(live.publish_rows)([row(org.pk, ve.pk, 1), row(other.pk, ve_other.pk, 2),
                                             row(org.pk, ve.pk, 3), row(org.pk, ve.pk, 4)])
    # then each organization got one channel-layer message, and the tab sees its three rows in order
    assert sorted(sends) == sorted([live.requests_group(org.pk), live.requests_group(other.pk)])
    seen = [(await ws.receive_json_from(timeout=2))["request"]["request_id"] for _ in range(3)]
    assert seen == ["req_1", "req_3", "req_4"]
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()
