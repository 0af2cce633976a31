"""The playground's relay (WSGI path: the sync generator) against the real gateway."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from billing.rates import rate_set
from routing.models import AccessKey, Role
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gateway():
    from django.core.asgi import get_asgi_application

    from tests.fakes.gateway_server import LiveServer
    from tokenbill.routing import build_application

    with LiveServer(build_application(get_asgi_application())) as live:
        yield live


@pytest.fixture
def upstream():
    from tests.fakes.openai_server import OpenAIFake

    with OpenAIFake(api_key="sk-pg") as fake:
        yield fake


def _caught_up() -> None:
    """Like tests/gateway's make_world: the gateway's snapshot and the biller's rate book
    see the world just built (both follow changes on their own within a second or so)."""
    from billing import gate
    from routing.cache import routing_cache

    routing_cache.refresh_now()
    book = getattr(gate.get_biller(), "rates", None)
    if book is not None:
        book.refresh()


def _lines(response) -> list[dict]:
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines() if line]


def test_playground_streams_through_the_gateway_without_storing_a_secret(client, gateway, upstream, settings):
    # given a VE that may call a model served by the fake upstream, and a developer
    settings.CONSOLE_GATEWAY_URL = gateway.url
    org = factories.make_org()
    rate_set(None, "USD", "100000")
    pm = factories.make_physical_model(factories.make_provider(org, base_url=upstream.base_url, api_key="sk-pg"))
    lm = factories.make_logical_model(org, name="chat", routes=[pm])
    ve = factories.make_ve(org, models=[lm], credits=100)
    client.force_login(factories.make_member(org, role=Role.DEVELOPER).user)
    _caught_up()
    # when they send a message from the playground, twice
    for _ in range(2):
        response = client.post(reverse("console:playground_stream"), {"ve": ve.pk, "model": "chat", "message": "hi there",
                                                                        "slot": "0"})
        lines = _lines(response)
        assert not any("error" in line for line in lines), lines
        # then the answer streams back as deltas, then usage and the request id
        assert "".join(line.get("delta", "") for line in lines) == "Echo: hi there"
        assert lines[-1]["done"] and lines[-1]["usage"]["completion_tokens"] > 0
        assert lines[-1]["request_id"].startswith("req")
        # and the charge, read from the stream's closing comment (no wait for the request log)
        assert lines[-1]["charge"] not in ("", "0")
    # and one playground key per slot exists, whose secret appears nowhere in what we sent
    keys = AccessKey.objects.filter(virtual_endpoint=ve)
    assert keys.count() == 1 and keys[0].name.startswith("Playground")
    assert keys[0].prefix not in json.dumps(lines)


def test_playground_reports_gateway_errors(client, gateway, upstream, settings):
    settings.CONSOLE_GATEWAY_URL = gateway.url
    org = factories.make_org()
    rate_set(None, "USD", "100000")
    pm = factories.make_physical_model(factories.make_provider(org, base_url=upstream.base_url, api_key="sk-pg"))
    lm = factories.make_logical_model(org, name="chat", routes=[pm])
    ve = factories.make_ve(org, models=[lm], credits=0)  # no credits
    client.force_login(factories.make_member(org, role=Role.DEVELOPER).user)
    _caught_up()
    lines = _lines(client.post(reverse("console:playground_stream"), {"ve": ve.pk, "model": "chat", "message": "hi"}))
    assert lines[0]["status"] == 429 and lines[0]["error"]


def test_playground_refuses_other_orgs_endpoint(client, db):
    org, other = factories.make_org(), factories.make_org()
    lm = factories.make_logical_model(other, name="chat")
    ve = factories.make_ve(other, models=[lm])
    client.force_login(factories.make_member(org, role=Role.OWNER).user)
    response = client.post(reverse("console:playground_stream"), {"ve": ve.pk, "model": "chat", "message": "hi"})
    assert response.status_code == 404
    assert not AccessKey.objects.filter(virtual_endpoint=ve).exists()


def test_the_streams_charge_comment_becomes_the_pages_charge():
    from console.views.playground import _SSE

    parser = _SSE("req_1")
    for line in ['data: {"choices": [{"delta": {"content": "hi"}}]}', "",
                 ": x-tokenbill-charge=1234.5 x-tokenbill-balance=10", "", "data: [DONE]"]:
        parser.feed(line)
    assert json.loads(parser.close()) == {"done": True, "usage": {}, "request_id": "req_1", "charge": "1,234.50"}
    broken = _SSE("req_2")
    broken.feed(": x-tokenbill-charge=not-a-number")
    assert "charge" not in json.loads(broken.close())
