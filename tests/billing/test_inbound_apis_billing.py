"""Billing of /v1/messages (Anthropic's Messages API, with the official anthropic SDK) and
/v1/responses (OpenAI's Responses API, with the openai SDK) through the running gateway:
the same charge and ledger as the same call made as Chat Completions, and budget
exhaustion in each API's own error shape or as an answer in its format."""

from __future__ import annotations

import anthropic
import openai
import pytest
from django.conf import settings

from billing.models import LedgerEntry, RequestLog
from billing.money import to_micros
from tests.billing.test_gateway_billing import real_biller, upstream, world_for  # noqa: F401
from tests.gateway.conftest import live_gateway  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def sdk(live_gateway, world, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{live_gateway.url}/{world.ve.public_id}", api_key=world.secret,
                               timeout=30, **kw)


def test_same_charge_as_chat_and_one_ledger_entry_each(live_gateway, real_biller, upstream):
    world = world_for(upstream, credits="1000")
    prompt = [{"role": "user", "content": "What is the price of tea"}]
    # when: the same call, as Messages then as Chat Completions
    raw = sdk(live_gateway, world, max_retries=0).messages.with_raw_response.create(
        model="chat", max_tokens=40, messages=prompt)
    msg = raw.parse()
    chat = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    chat_raw = chat.chat.completions.with_raw_response.create(model="chat", max_tokens=40, messages=prompt)
    # then: equal usage and equal charges, one ledger charge each, the log names the API
    assert msg.usage.output_tokens == chat_raw.parse().usage.completion_tokens
    assert raw.headers["x-tokenbill-charge"] == chat_raw.headers["x-tokenbill-charge"]
    real_biller.flush_sync()
    charges = list(LedgerEntry.objects.filter(kind="charge"))
    assert len(charges) == 2 and charges[0].amount == charges[1].amount == to_micros(raw.headers["x-tokenbill-charge"])


def test_request_log_names_the_inbound_api(live_gateway, real_biller, upstream):
    world = world_for(upstream, credits="1000")
    client = sdk(live_gateway, world, max_retries=0)
    client.messages.create(model="chat", max_tokens=10, messages=[{"role": "user", "content": "a"}])
    with client.messages.stream(model="chat", max_tokens=10, messages=[{"role": "user", "content": "b"}]) as s:
        assert s.get_final_text().startswith("Echo: b")
    real_biller.flush_sync()
    rows = list(RequestLog.objects.order_by("started_at"))
    assert [(r.endpoint, r.stream) for r in rows] == [("messages", False), ("messages", True)]
    assert all(r.charge > 0 for r in rows)
    assert LedgerEntry.objects.filter(kind="charge").count() == 2


def test_budget_exhausted_error_mode(live_gateway, real_biller, upstream):
    world = world_for(upstream, credits="1")
    client = sdk(live_gateway, world)  # the SDK's retries left ON: x-should-retry: false stops them
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model="chat", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    error = raised.value
    body = error.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    url = body["error"]["checkout_url"]
    assert url.startswith(f"{settings.PUBLIC_BASE_URL}/checkout?ve_id={world.ve.public_id}")
    assert url in body["error"]["message"]
    assert error.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 0
    real_biller.flush_sync()
    assert RequestLog.objects.get().status == "budget_exhausted"


@pytest.mark.parametrize("stream", [False, True])
def test_budget_exhausted_message_mode(live_gateway, real_biller, upstream, stream):
    world = world_for(upstream, credits="1", ve_kw={"exhaustion_mode": "message"})
    client = sdk(live_gateway, world, max_retries=0)
    args = {"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        with client.messages.stream(**args) as s:
            text = s.get_final_text()
    else:
        msg = client.messages.create(**args)
        assert msg.type == "message" and msg.usage.output_tokens == 0
        text = msg.content[0].text
    assert "run out of credits" in text and f"/checkout?ve_id={world.ve.public_id}" in text
    assert len(upstream.requests) == 0
    assert not LedgerEntry.objects.filter(kind="charge").exists()


# --- /v1/responses (OpenAI's Responses API), with the openai SDK -------------------------------
def oai(live_gateway, world, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_gateway.url}/{world.ve.public_id}/v1", api_key=world.secret,
                         timeout=30, **kw)


def test_responses_same_charge_as_chat(live_gateway, real_biller, upstream):
    world = world_for(upstream, credits="1000")
    sdk = oai(live_gateway, world, max_retries=0)
    raw = sdk.responses.with_raw_response.create(model="chat", input="What is the price of tea", max_output_tokens=40)
    resp = raw.parse()
    chat_raw = sdk.chat.completions.with_raw_response.create(
        model="chat", max_tokens=40, messages=[{"role": "user", "content": "What is the price of tea"}])
    assert resp.usage.output_tokens == chat_raw.parse().usage.completion_tokens
    assert raw.headers["x-tokenbill-charge"] == chat_raw.headers["x-tokenbill-charge"]
    real_biller.flush_sync()
    assert [r.endpoint for r in RequestLog.objects.order_by("started_at")] == ["responses", "chat.completions"]
    assert LedgerEntry.objects.filter(kind="charge").count() == 2


def test_responses_budget_exhausted_error_mode(live_gateway, real_biller, upstream):
    world = world_for(upstream, credits="1")
    with pytest.raises(openai.RateLimitError) as raised:
        oai(live_gateway, world).responses.create(model="chat", input="hi")  # SDK retries left ON
    error = raised.value
    assert error.code == "budget_exhausted"
    assert error.body["checkout_url"].startswith(f"{settings.PUBLIC_BASE_URL}/checkout?ve_id={world.ve.public_id}")
    assert error.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_responses_budget_exhausted_message_mode(live_gateway, real_biller, upstream, stream):
    world = world_for(upstream, credits="1", ve_kw={"exhaustion_mode": "message"})
    sdk = oai(live_gateway, world, max_retries=0)
    if stream:
        with sdk.responses.stream(model="chat", input="hi") as s:
            text = s.get_final_response().output_text
    else:
        text = sdk.responses.create(model="chat", input="hi").output_text
    assert "run out of credits" in text and f"/checkout?ve_id={world.ve.public_id}" in text
    assert len(upstream.requests) == 0
    assert not LedgerEntry.objects.filter(kind="charge").exists()
