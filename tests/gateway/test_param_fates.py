"""Each parameter's declared fate per provider kind, through the running gateway with the
official openai SDK: unsupported parameters dropped (and named in x-tokenbill-dropped-params)
or refused with a 400 by the logical model's policy; reasoning_effort mapped per kind;
structured outputs translated for Anthropic (a forced tool) and Gemini (responseSchema)."""

from __future__ import annotations

import json

import openai
import pytest

from gateway.adapters import params
from routing.cache import routing_cache
from routing.models import LogicalModel
from routing.services import config_changed
from tests.fakes import anthropic_server as ant
from tests.fakes import gemini_server as gem
from tests.fakes import openai_server as oa
from tests.fakes.anthropic_server import AnthropicFake
from tests.fakes.gemini_server import GeminiFake
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "Give me a city"}]
# The schema of OpenAI's structured-outputs guide
# (https://platform.openai.com/docs/guides/structured-outputs, response_format json_schema).
CITY = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"], "additionalProperties": False}}}


@pytest.fixture
def claude():
    with AnthropicFake() as server:
        yield server


@pytest.fixture
def gemini():
    with GeminiFake() as server:
        yield server


def set_policy(world, policy: str) -> None:
    LogicalModel.objects.filter(pk=world.model.pk).update(unsupported_params=policy)
    config_changed()
    routing_cache.refresh_now()


def sdk(live_gateway, world) -> openai.OpenAI:
    return world.client(f"{live_gateway.url}/v1")


# --- the policy --------------------------------------------------------------------------------


def test_unsupported_params_are_dropped_and_named_in_a_header(live_gateway, claude, biller):
    # given: an Anthropic route; the default policy is "drop"
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    # when: the client sends two parameters Anthropic's API has no place for
    raw = sdk(live_gateway, world).chat.completions.with_raw_response.create(
        model="chat", messages=MSG, max_tokens=50, seed=7, logit_bias={"50256": -100}, temperature=0.5)
    # then: the call is served, the header names them, and they never reached the upstream
    assert raw.parse().choices[0].message.content == "Hello from Claude."
    assert raw.headers["x-tokenbill-dropped-params"] == "logit_bias,seed"  # sorted
    sent = claude.requests[0].json
    assert "seed" not in sent and "logit_bias" not in sent and sent["temperature"] == 0.5


def test_reject_policy_refuses_with_a_400_naming_the_parameter(live_gateway, claude, biller):
    # given
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    set_policy(world, "reject")
    # when
    with pytest.raises(openai.BadRequestError) as err:
        sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=50, seed=7)
    # then: the documented error shape, and no upstream call
    error = err.value.body
    assert error["param"] == "seed" and error["code"] == "unsupported_parameter"
    assert error["type"] == "invalid_request_error" and "seed" in error["message"]
    assert claude.requests == []


def test_reject_policy_serves_a_call_without_unsupported_params(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    set_policy(world, "reject")
    raw = sdk(live_gateway, world).chat.completions.with_raw_response.create(
        model="chat", messages=MSG, max_tokens=50, temperature=0.2, stop=["\n"], user="u-1")
    assert raw.parse().choices[0].message.content == "Hello from Claude."
    assert "x-tokenbill-dropped-params" not in raw.headers


def test_openai_routes_pass_every_parameter(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    raw = sdk(live_gateway, world).chat.completions.with_raw_response.create(
        model="chat", messages=MSG, seed=7, logit_bias={"50256": -100}, reasoning_effort="low")
    assert "x-tokenbill-dropped-params" not in raw.headers
    sent = openai_up.requests[0].json
    assert sent["seed"] == 7 and sent["logit_bias"] == {"50256": -100} and sent["reasoning_effort"] == "low"


def test_stream_names_dropped_params_in_the_response_headers(live_gateway, gemini, biller):
    world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
    with sdk(live_gateway, world).chat.completions.with_streaming_response.create(
            model="chat", messages=MSG, stream=True, logprobs=True, top_logprobs=2, seed=3) as resp:
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
        assert resp.headers["x-tokenbill-dropped-params"] == "logprobs,top_logprobs"
    assert text
    assert gemini.requests[0].json["generationConfig"]["seed"] == 3  # seed is translated for Gemini


def test_the_fate_table_declares_what_the_adapters_translate():
    assert params.fate("openai", "logit_bias") == params.PASSED
    assert params.fate("azure_openai", "anything_new") == params.PASSED
    assert params.fate("anthropic", "response_format") == params.TRANSLATED
    assert params.fate("anthropic", "seed") == params.UNSUPPORTED
    assert params.fate("gemini", "seed") == params.TRANSLATED
    assert params.fate("gemini", "logit_bias") == params.UNSUPPORTED


# --- reasoning ---------------------------------------------------------------------------------


def test_anthropic_reasoning_effort_becomes_a_thinking_budget(live_gateway, claude, biller):
    # given: an answer with a thinking block (the fake enforces thinking's documented rules)
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(ant.reply(text="Paris.", thinking="The user wants a city; Paris is one.",
                            usage=ant.usage(input=20, output=40)))
    # when: effort low, with a temperature that thinking does not allow
    resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=4000,
                                                            reasoning_effort="low", temperature=0.3)
    # then
    sent = claude.requests[0].json
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["max_tokens"] == 4000 and "temperature" not in sent
    message = resp.choices[0].message
    assert message.content == "Paris."
    assert message.model_extra["reasoning_content"] == "The user wants a city; Paris is one."
    assert resp.usage.completion_tokens == 40  # thinking is billed as output
    assert 0 < resp.usage.completion_tokens_details.reasoning_tokens < 40
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.output_tokens == 40 and outcome.usage.reasoning_tokens > 0


def test_anthropic_high_effort_is_capped_below_max_tokens(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=5000,
                                                     reasoning_effort="high")
    # 24576 would not fit: the budget leaves 1024 tokens for the answer
    assert claude.requests[0].json["thinking"] == {"type": "enabled", "budget_tokens": 5000 - 1024}


def test_anthropic_small_limit_means_no_thinking(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=1500,
                                                     reasoning_effort="medium")
    assert "thinking" not in claude.requests[0].json


def test_anthropic_thinking_streams_as_reasoning_content(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(ant.stream(thinking="Let me think.", text=["Par", "is."], output_steps=[30]))
    chunks = list(sdk(live_gateway, world).chat.completions.create(
        model="chat", messages=MSG, max_tokens=4000, reasoning_effort="low", stream=True,
        stream_options={"include_usage": True}))
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == "Let me think." and text == "Paris."
    usage = chunks[-1].usage
    assert usage.completion_tokens == 30 and usage.completion_tokens_details.reasoning_tokens > 0


def test_gemini_reasoning_effort_becomes_thinking_config(live_gateway, gemini, biller):
    world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
    gemini.script(gem.reply(text="Rome.", thought="pick one", usage=gem.usage(prompt=10, candidates=3, thoughts=50)))
    resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, reasoning_effort="high")
    # https://ai.google.dev/gemini-api/docs/openai: high maps to a 24K thinking budget
    assert gemini.requests[0].json["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 24576}
    assert resp.usage.completion_tokens_details.reasoning_tokens == 50
    assert resp.choices[0].message.model_extra["reasoning_content"] == "pick one"
    (_, outcome), = biller.wait_settled()
    assert (outcome.usage.output_tokens, outcome.usage.reasoning_tokens) == (53, 50)


def test_openai_reasoning_tokens_are_read_from_usage(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "o-up", 0, 1)])
    # completion_tokens_details as in OpenAI's API reference (chat completion object, usage)
    openai_up.script(oa.reply("42", usage={"prompt_tokens": 9, "completion_tokens": 300, "total_tokens": 309,
                                                "completion_tokens_details": {"reasoning_tokens": 256}}))
    sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, reasoning_effort="medium")
    (_, outcome), = biller.wait_settled()
    assert (outcome.usage.output_tokens, outcome.usage.reasoning_tokens) == (300, 256)


def test_an_unknown_effort_is_a_400(live_gateway, gemini, biller):
    world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
    with pytest.raises(openai.BadRequestError) as err:
        sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, reasoning_effort="extreme")
    assert err.value.body["param"] == "reasoning_effort" and gemini.requests == []


# --- structured outputs -------------------------------------------------------------------------


def test_anthropic_json_schema_is_a_forced_tool_and_comes_back_as_content(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(ant.reply(text=None, tool_calls=[("structured_output", {"name": "Lyon", "population": 520000})]))
    raw = sdk(live_gateway, world).chat.completions.with_raw_response.create(
        model="chat", messages=MSG, max_tokens=200, response_format=CITY)
    resp = raw.parse()
    # then: the client gets the JSON as the answer, as OpenAI would send it
    assert json.loads(resp.choices[0].message.content) == {"name": "Lyon", "population": 520000}
    assert resp.choices[0].message.tool_calls is None and resp.choices[0].finish_reason == "stop"
    assert "x-tokenbill-dropped-params" not in raw.headers
    sent = claude.requests[0].json
    tool, = sent["tools"]
    assert tool["name"] == "structured_output" and tool["input_schema"] == CITY["json_schema"]["schema"]
    assert sent["tool_choice"] == {"type": "tool", "name": "structured_output"}


def test_anthropic_json_schema_streams_as_content(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(ant.stream(text=[], tool_calls=[("structured_output", ['{"name": "Ly', 'on", "population": 1}'])]))
    chunks = list(sdk(live_gateway, world).chat.completions.create(
        model="chat", messages=MSG, max_tokens=200, response_format=CITY, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"name": "Lyon", "population": 1}
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_anthropic_json_schema_with_reasoning_keeps_the_schema(live_gateway, claude, biller):
    # thinking cannot go with a forced tool (the fake refuses it, as Anthropic does): the schema wins
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(ant.reply(text=None, tool_calls=[("structured_output", {"name": "Oslo", "population": 7})]))
    resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=8000,
                                                            response_format=CITY, reasoning_effort="low")
    assert json.loads(resp.choices[0].message.content)["name"] == "Oslo"
    assert "thinking" not in claude.requests[0].json


def test_gemini_json_schema_is_sent_as_response_schema(live_gateway, gemini, biller):
    world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
    gemini.script(gem.reply(text='{"name": "Turin", "population": 870000}'))
    resp = sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG, response_format=CITY)
    assert json.loads(resp.choices[0].message.content)["name"] == "Turin"
    config = gemini.requests[0].json["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    # the schema itself, without the JSON Schema keywords Gemini's OpenAPI subset refuses
    assert config["responseSchema"] == {"type": "object", "required": ["name", "population"], "properties": {
        "name": {"type": "string"}, "population": {"type": "integer"}}}


def test_gemini_json_object_sends_the_mime_type_alone(live_gateway, gemini, biller):
    world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
    gemini.script(gem.reply(text="{}"))
    sdk(live_gateway, world).chat.completions.create(model="chat", messages=MSG,
                                                     response_format={"type": "json_object"})
    config = gemini.requests[0].json["generationConfig"]
    assert config["responseMimeType"] == "application/json" and "responseSchema" not in config
