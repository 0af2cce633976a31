"""Output limits through the running gateway (official openai SDK, real biller): none is
added unless the balance needs one, and then in the parameter the upstream takes."""

from __future__ import annotations

import openai
import pytest
from aiohttp import web

from billing import gate
from billing.models import RequestLog
from gateway import fake_upstream
from routing import output_limits
from routing.cache import routing_cache
from routing.models import PhysicalModel, VirtualEndpoint
from tests.fakes import anthropic_server, gemini_server
from tests.fakes.anthropic_server import AnthropicFake
from tests.fakes.gemini_server import GeminiFake
from tests.fakes.openai_server import RECORDED, UNSUPPORTED_MAX_TOKENS
from tests.factories import grant
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "Say hello"}]
LIMITS = ("max_tokens", "max_completion_tokens")


def sent_limits(fake) -> dict:
    body = fake.requests[-1].json
    return {k: body[k] for k in LIMITS if k in body}


async def whole_limit(request):
    """A model that writes as much as it may: output tokens = the limit it was sent (a
    reasoning model's hidden thinking counts as output), 200 when it got none."""
    body = request[RECORDED].json
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 200
    payload = fake_upstream.completion(body, "Hello")
    payload["usage"] = {"prompt_tokens": 9, "completion_tokens": limit, "total_tokens": 9 + limit,
                        "completion_tokens_details": {"reasoning_tokens": limit - 1}}
    return web.json_response(payload)


def flush():
    flush_sync = getattr(gate.get_biller(), "flush_sync", None)
    if flush_sync:
        flush_sync()


def rich(world):
    """make_world grants 1000 credits; output costs 0.2 credits a token (2 USD / 1M tokens
    at 100000 credits a USD): 50000 more pay any model's whole output here."""
    grant(world.ve, 50_000)
    return world


@pytest.fixture
def gpt5(live_gateway, openai_up):
    return rich(make_world([(openai_up, "openai", "gpt-5-mini", 0, 1)]))


def test_a_reasoning_model_is_served_with_and_without_a_client_limit(live_gateway, gpt5, openai_up):
    sdk = gpt5.client(f"{live_gateway.url}/v1")
    # when: no limit named, the balance covers the model's whole output
    resp = sdk.chat.completions.create(model="chat", messages=MSG)
    # then: no output limit at all goes upstream (was: max_tokens=4096, refused with a 400)
    assert resp.choices[0].message.content and sent_limits(openai_up) == {}
    # when: the client names max_tokens (what most SDK code sends): spelled the model's way
    sdk.chat.completions.create(model="chat", messages=MSG, max_tokens=50)
    assert sent_limits(openai_up) == {"max_completion_tokens": 50}
    sdk.chat.completions.create(model="chat", messages=MSG, max_completion_tokens=70)
    assert sent_limits(openai_up) == {"max_completion_tokens": 70}
    # and streamed
    chunks = list(sdk.chat.completions.create(model="chat", messages=MSG, max_tokens=60, stream=True))
    assert chunks and sent_limits(openai_up) == {"max_completion_tokens": 60}


def test_the_fake_refuses_max_tokens_for_reasoning_models_as_openai_does(openai_up):
    # The fake upstream itself (the gateway tests above rely on it refusing)
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "o3", "messages": MSG, "max_tokens": 5}).encode()
    request = urllib.request.Request(f"{openai_up.base_url}/chat/completions", body,
                                     {"Authorization": f"Bearer {openai_up.api_key}",
                                      "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400 and json.loads(err.value.read()) == UNSUPPORTED_MAX_TOKENS


def test_a_non_reasoning_model_gets_no_limit_either(live_gateway, openai_up):
    world = rich(make_world([(openai_up, "openai", "gpt-4o", 0, 1)]))
    world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert sent_limits(openai_up) == {}  # was max_tokens=4096: answers cut at 4096 tokens
    world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG, max_tokens=30)
    assert sent_limits(openai_up) == {"max_tokens": 30}


def test_a_tiny_balance_clamps_a_reasoning_model_with_max_completion_tokens(live_gateway, openai_up):
    # given: output at 2 USD / 1M tokens, 1 USD = 100000 credits: 0.2 credits a token; the
    # 1000 credits pay ~5000 tokens, far below gpt-5's 128000-token cap. The model writes
    # all it may each time.
    world = make_world([(openai_up, "openai", "gpt-5", 0, 1)])
    openai_up.script(whole_limit, whole_limit)
    sdk = world.client(f"{live_gateway.url}/v1")
    # when: a limit the balance pays: left as it is (spelled the model's way)
    sdk.chat.completions.create(model="chat", messages=MSG, max_tokens=2000)
    assert sent_limits(openai_up) == {"max_completion_tokens": 2000}
    # when: no limit, and the balance cannot pay the model's whole output
    resp = sdk.chat.completions.create(model="chat", messages=MSG)
    # then: clamped to what is left, in max_completion_tokens, and paid for in full
    limits = sent_limits(openai_up)
    assert list(limits) == ["max_completion_tokens"]
    assert 16 <= limits["max_completion_tokens"] < 3000
    assert resp.usage.completion_tokens == limits["max_completion_tokens"]
    flush()
    ve = VirtualEndpoint.objects.get(pk=world.ve.pk)
    assert 0 < ve.credit_spend <= ve.credit_budget
    rows = list(RequestLog.objects.filter(virtual_endpoint_id=ve.pk).order_by("id"))
    assert [r.output_tokens for r in rows] == [2000, limits["max_completion_tokens"]]
    assert sum(r.charge for r in rows) == ve.credit_spend
    # when: what is left pays no useful call: refused before the upstream
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="chat", messages=MSG)
    assert len(openai_up.requests) == 2


def test_a_limit_within_the_balance_is_left_as_the_client_sent_it(live_gateway, openai_up):
    world = make_world([(openai_up, "openai", "gpt-4o", 0, 1)])
    world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG,
                                                                    max_completion_tokens=25)
    assert sent_limits(openai_up) == {"max_completion_tokens": 25}


def test_the_parameter_is_merchant_data_for_deployments_named_anything(live_gateway, azure_up):
    # given: an Azure deployment whose name says nothing; by name it takes max_tokens
    world = rich(make_world([(azure_up, "azure_openai", "prod-chat", 0, 1)]))
    sdk = world.client(f"{live_gateway.url}/v1")
    sdk.chat.completions.create(model="chat", messages=MSG, max_tokens=40)
    assert sent_limits(azure_up) == {"max_tokens": 40}
    # when: the merchant says it is a reasoning deployment
    PhysicalModel.objects.filter(pk=world.physical[0].pk).update(output_limit_parameter="max_completion_tokens")
    from routing.services import config_changed

    config_changed()
    routing_cache.refresh_now()
    sdk.chat.completions.create(model="chat", messages=MSG, max_tokens=40)
    # then
    assert sent_limits(azure_up) == {"max_completion_tokens": 40}


def test_an_azure_reasoning_deployment_named_after_its_model_takes_max_completion_tokens(live_gateway, azure_up):
    world = rich(make_world([(azure_up, "azure_openai", "o4-mini", 0, 1)]))
    resp = world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG, max_tokens=40)
    assert resp.choices[0].message.content and sent_limits(azure_up) == {"max_completion_tokens": 40}


def test_anthropic_gets_the_models_own_cap_or_a_clamp(live_gateway):
    with AnthropicFake(api_key="sk-ant-limits") as up:
        world = make_world([(up, "anthropic", "claude-sonnet-4-20250514", 0, 1)])
        rich(world)  # given: a balance that pays its 64000 output tokens
        sdk = world.client(f"{live_gateway.url}/v1")
        sdk.chat.completions.create(model="chat", messages=MSG)
        # then: Anthropic's required max_tokens is the model's cap, not 4096
        assert up.requests[-1].json["max_tokens"] == 64_000
        # when: the merchant sets the cap
        PhysicalModel.objects.filter(pk=world.physical[0].pk).update(max_output_tokens=12_000)
        from routing.services import config_changed

        config_changed()
        routing_cache.refresh_now()
        sdk.chat.completions.create(model="chat", messages=MSG)
        assert up.requests[-1].json["max_tokens"] == 12_000
    with AnthropicFake(api_key="sk-ant-limits") as up:
        poor = make_world([(up, "anthropic", "claude-sonnet-4-20250514", 0, 1)])  # 1000 credits: ~5000 tokens
        up.script(anthropic_server.reply())
        poor.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
        assert 16 <= up.requests[-1].json["max_tokens"] < 5000


def test_gemini_gets_no_limit_or_a_clamp_in_max_output_tokens(live_gateway):
    with GeminiFake(api_key="AIza-limits") as up:
        world = make_world([(up, "gemini", "gemini-2.5-flash", 0, 1)])  # cap 65536: ~13000 credits
        up.script(gemini_server.reply())
        world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
        clamped = up.requests[-1].json["generationConfig"]["maxOutputTokens"]
        assert 16 <= clamped < 5000
        rich(world)
        up.script(gemini_server.reply())
        world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
        assert "maxOutputTokens" not in (up.requests[-1].json.get("generationConfig") or {})


@pytest.mark.parametrize("name,parameter,cap", [
    ("gpt-5", "max_completion_tokens", 128_000), ("gpt-5.1-codex", "max_completion_tokens", 128_000),
    ("o1", "max_completion_tokens", 100_000), ("o3-mini", "max_completion_tokens", 100_000),
    ("o4-mini", "max_completion_tokens", 100_000), ("openai/o3", "max_completion_tokens", 100_000),
    ("gpt-4o", "max_tokens", 16_384), ("gpt-4.1-mini", "max_tokens", 32_768),
    ("omni-moderation-latest", "max_tokens", output_limits.FALLBACK_CAP),
    ("deepseek-chat", "max_tokens", output_limits.FALLBACK_CAP),
])
def test_defaults_by_upstream_name(name, parameter, cap):
    assert output_limits.parameter("openai", name, "") == parameter
    assert output_limits.cap(name, None) == cap
    assert output_limits.parameter("openai", name, "max_tokens") == "max_tokens"  # the merchant's choice wins
    assert output_limits.parameter("anthropic", name, "") == "max_tokens"  # its adapter spells its own
    assert output_limits.cap(name, 777) == 777
