"""Provider quirks real traffic hits, one test each, through the running gateway with the
official openai SDK. (Anthropic 529 overloaded_error and Gemini 429 RESOURCE_EXHAUSTED
falling over are in test_anthropic_e2e.py and test_gemini_e2e.py.)"""

from __future__ import annotations

import json
import logging
import time

import openai
import pytest

from routing.breaker import breaker
from routing.cache import routing_cache
from routing.models import Provider
from routing.services import config_changed
from tests.fakes import anthropic_server as ant
from tests.fakes import gemini_server as gem
from tests.fakes import openai_server as oa
from tests.fakes.anthropic_server import AnthropicFake
from tests.fakes.gemini_server import GeminiFake
from tests.fakes.openai_server import OpenAIFake
from tests.fakes.server import json_reply, sse_reply
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "Say hello"}]


def sdk(live_gateway, world) -> openai.OpenAI:
    return world.client(f"{live_gateway.url}/v1")


# --- OpenAI insufficient_quota ----------------------------------------------------------------


def test_insufficient_quota_falls_over_cools_the_provider_down_longer_and_alerts(
        live_gateway, openai_up, biller, caplog, settings):
    # given: two routes; the first provider's account is out of money
    settings.GATEWAY_QUOTA_COOLDOWN = 900.0
    with OpenAIFake(api_key="sk-second") as second:
        world = make_world([(openai_up, "openai", "gpt-a", 0, 1), (second, "openai", "gpt-b", 1, 1)])
        openai_up.script(oa.insufficient_quota())
        # when
        with caplog.at_level(logging.ERROR, logger="tokenbill.alerts"):
            resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
        # then: served by the second route
        assert resp.choices[0].message.content
        (_, outcome), = biller.wait_settled()
        assert [(a["status"], a["error"]) for a in outcome.attempts] == [(429, "insufficient_quota"), (200, "")]
    # and the first route rests for the quota cooldown, far longer than a breaker trip
    first = world.physical[0].pk
    assert breaker.open_until(first) - time.time() > 800
    # and the operator is told which provider to top up (never its key)
    alert, = [r for r in caplog.records if r.name == "tokenbill.alerts"]
    text = alert.getMessage()
    assert "insufficient_quota" in text and world.physical[0].provider.name in text
    assert openai_up.api_key not in text


def test_insufficient_quota_emails_the_merchant_once_per_cooldown(live_gateway, openai_up, biller, mailoutbox):
    from django.core.cache import cache

    from tests import factories

    with OpenAIFake(api_key="sk-second") as second:
        world = make_world([(openai_up, "openai", "gpt-a", 0, 1), (second, "openai", "gpt-b", 1, 1)])
        provider = world.physical[0].provider
        cache.delete(f"alert:quota:{provider.pk}")  # (provider ids repeat across tests)
        factories.make_member(provider.organization, user=factories.make_user("owner@merchant.example"))
        openai_up.script(oa.insufficient_quota())
        sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
        deadline = time.time() + 10
        while not mailoutbox and time.time() < deadline:  # sent off the event loop
            time.sleep(0.05)
        assert len(mailoutbox) == 1
        mail = mailoutbox[0]
        assert mail.to == ["owner@merchant.example"] and provider.name in mail.subject
        assert "insufficient_quota" in mail.body and openai_up.api_key not in mail.body
        # the same provider again within its cooldown: no second email
        from billing.alerts import provider_quota_alert

        assert provider_quota_alert(provider.pk, "gpt-a") is False
        assert len(mailoutbox) == 1


def test_a_plain_429_is_not_taken_for_an_empty_account(live_gateway, openai_up, biller):
    with OpenAIFake(api_key="sk-second") as second:
        world = make_world([(openai_up, "openai", "gpt-a", 0, 1), (second, "openai", "gpt-b", 1, 1)])
        openai_up.script(oa.fail(429, message="Rate limit reached", code="rate_limit_exceeded"))
        sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
        (_, outcome), = biller.wait_settled()
    assert outcome.attempts[0]["error"] == "upstream_unavailable"
    assert breaker.open_until(world.physical[0].pk) - time.time() < 100


# --- Azure api-versions without stream_options ------------------------------------------------


@pytest.mark.parametrize("version,takes", [("2024-06-01", False), ("2024-02-15-preview", False),
                                           ("2024-10-21", True), ("2024-09-01-preview", True)])
def test_azure_old_api_version_streams_without_stream_options_and_usage_is_counted(
        live_gateway, azure_up, biller, version, takes):
    # given: a deployment on an api-version (the fake refuses stream_options before 2024-09-01-preview)
    world = make_world([(azure_up, "azure_openai", "dep-1", 0, 1)])
    Provider.objects.filter(pk=world.physical[0].provider_id).update(api_version=version)
    config_changed()
    routing_cache.refresh_now()
    # when
    chunks = list(sdk(live_gateway, world).chat.completions.create(
        model="chat", messages=MSG, stream=True, stream_options={"include_usage": True}))
    # then: the stream is served
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sent = azure_up.requests[0]
    assert ("stream_options" in sent.json) is takes and sent.query["api-version"] == version
    # and billed: reported usage where the version has it, else counted (estimated)
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.output_tokens > 0 and outcome.usage.input_tokens > 0
    assert outcome.usage.estimated is (not takes)


# --- content filters are answers --------------------------------------------------------------


def test_openai_content_filter_finish_is_the_answer_not_a_failure(live_gateway, azure_up, biller):
    # Azure's documented filtered completion: finish_reason content_filter with the
    # content_filter_results annotation (https://learn.microsoft.com/azure/ai-services/openai/concepts/content-filter,
    # "Scenario: ... the output is filtered"); usage is what Azure bills.
    with OpenAIFake(api_key="sk-second") as second:
        world = make_world([(azure_up, "azure_openai", "dep-1", 0, 1), (second, "openai", "gpt-b", 1, 1)])
        azure_up.script(json_reply({
            "id": "chatcmpl-filtered", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "content_filter", "message": {"role": "assistant", "content": None},
                         "content_filter_results": {"hate": {"filtered": True, "severity": "high"}}}],
            "usage": {"prompt_tokens": 27, "completion_tokens": 15, "total_tokens": 42}}))
        resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
        (_, outcome), = biller.wait_settled()
        assert second.requests == []  # not a route failure: no fall-over
    assert resp.choices[0].finish_reason == "content_filter" and resp.choices[0].message.content is None
    assert [a["status"] for a in outcome.attempts] == [200]
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (27, 15)


def test_gemini_safety_block_is_a_content_filter_answer(live_gateway, biller):
    # A blocked prompt: no candidates, promptFeedback.blockReason
    # (https://ai.google.dev/api/generate-content#PromptFeedback), prompt tokens billed.
    with GeminiFake() as gemini:
        world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
        gemini.script(json_reply({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "gemini-up"}))
        resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
    assert resp.choices[0].finish_reason == "content_filter"
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.input_tokens == 9 and [a["status"] for a in outcome.attempts] == [200]


def test_gemini_safety_finish_in_a_stream(live_gateway, biller):
    with GeminiFake() as gemini:
        world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
        gemini.script(gem.stream(text=["I can"], finish="SAFETY", usage=gem.usage(prompt=8, candidates=2)))
        chunks = list(sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, stream=True))
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == ["content_filter"]


def test_anthropic_refusal_is_a_content_filter_answer(live_gateway, biller):
    # stop_reason "refusal" (https://docs.anthropic.com/en/api/messages, stop_reason values)
    with AnthropicFake() as claude:
        world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
        claude.script(ant.reply(text="", stop_reason="refusal", usage=ant.usage(input=30, output=1)))
        resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=50)
    assert resp.choices[0].finish_reason == "content_filter"
    (_, outcome), = biller.wait_settled()
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (30, 1)


# --- deltas whose content is a list of parts --------------------------------------------------


def test_stream_delta_with_list_content_reaches_the_client_as_text(live_gateway, openai_up, biller):
    # Mistral's reasoning models stream content as parts
    # (https://docs.mistral.ai/capabilities/reasoning/: a "thinking" chunk of text parts, then "text").
    world = make_world([(openai_up, "openai_compatible", "magistral-up", 0, 1)])
    base = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "magistral-up"}

    def chunk(delta, finish=None, **extra):
        return (None, json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}))

    openai_up.script(sse_reply([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "Greet back."}]}]}),
        chunk({"content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}),
        chunk({"content": "!"}, "stop"),
        (None, json.dumps({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9,
                                                             "total_tokens": 14}})),
        (None, "[DONE]")]))
    chunks = list(sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert all(isinstance(d.content, (str, type(None))) for d in deltas)
    assert "".join(d.content or "" for d in deltas) == "Hello!"
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "Greet back."
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.output_tokens == 9 and not outcome.usage.estimated
