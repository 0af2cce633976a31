"""Issue 15: an upstream's 3xx is a route failure (502, fall over), never relayed or
followed; no part of a provider's URL reaches an API user."""

from __future__ import annotations

from types import SimpleNamespace

import openai
import pytest

from gateway.fallback import scrub
from tests.fakes import openai_server as up
from tests.fakes.server import json_reply
from tests.gateway.conftest import make_world

MSG = [{"role": "user", "content": "go"}]


def _redirect():
    return json_reply({"moved": True}, status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})


@pytest.fixture
def second():
    with up.OpenAIFake(api_key="sk-second") as fake:
        yield fake


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_redirect_falls_back_to_the_next_route(live_gateway, openai_up, second, stream):
    world = make_world([(openai_up, "openai", "primary", 0, 1), (second, "openai", "backup", 1, 1)])
    openai_up.script(_redirect())
    second.script(up.stream("from backup") if stream else up.reply("from backup"))
    client = world.client(f"{live_gateway.url}/v1")
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="chat", messages=MSG, stream=True) if c.choices)
    else:
        text = client.chat.completions.create(model="chat", messages=MSG).choices[0].message.content
    assert text == "from backup"
    assert len(second.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_a_redirect_on_the_only_route_is_a_502_not_a_3xx(live_gateway, openai_up):
    world = make_world([(openai_up, "openai", "primary", 0, 1)])
    openai_up.script(_redirect())
    with pytest.raises(openai.APIStatusError) as failed:
        world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert failed.value.status_code == 502
    assert len(openai_up.requests) == 1  # not followed


def test_no_part_of_the_provider_url_reaches_the_user():
    target = SimpleNamespace(provider=SimpleNamespace(api_key="sk-live-123456",
                                                      base_url="https://gw.example.net:8443/acct-deadbeef42/v1"))
    message = ("Invalid request to gw.example.net:8443/acct-deadbeef42/v1/chat/completions "
               "(also /acct-deadbeef42/ and gw.example.net) with key sk-live-123456")
    scrubbed = scrub(message, target)
    for part in ("acct-deadbeef42", "gw.example.net", "8443", "sk-live-123456"):
        assert part not in scrubbed
    assert "chat/completions" in scrubbed and scrubbed.startswith("Invalid request to ***")
