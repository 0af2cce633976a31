"""Through the gateway: an upstream on a private address is refused at connect time unless
UPSTREAM_ALLOW_PRIVATE or the provider's operator-set flag allows it; the refusal is an
upstream failure (the next route answers) and is logged for the operator."""

from __future__ import annotations

import logging

import pytest

from routing.cache import routing_cache
from routing.models import Provider
from tests.fakes import openai_server as up
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def second():
    with up.OpenAIFake(api_key="sk-second") as fake:
        yield fake


def test_a_private_upstream_is_refused_at_connect_unless_its_provider_is_allowed(
        live_gateway, openai_up, second, biller, settings, caplog):
    settings.UPSTREAM_ALLOW_PRIVATE = False
    world = make_world([(openai_up, "openai", "primary", 0, 1), (second, "openai", "backup", 1, 1)])
    backup = Provider.objects.get(physical_models__upstream_model="backup")
    backup.allow_private_network = True  # the operator's flag (Django admin)
    backup.save()
    routing_cache.refresh_now()
    client = world.client(f"{live_gateway.url}/v1")
    with caplog.at_level(logging.WARNING, logger="gateway.httpclient"):
        text = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert text.choices[0].message.content == "Echo: hi"
    assert openai_up.requests == [] and [r.json["model"] for r in second.requests] == ["backup"]
    (_, outcome), = biller.wait_settled()
    assert [a["upstream_model"] for a in outcome.attempts] == ["primary", "backup"]
    assert "UpstreamRefused" in outcome.attempts[0]["error"]
    assert any("refused" in r.getMessage() and "loopback" in r.getMessage() for r in caplog.records)
