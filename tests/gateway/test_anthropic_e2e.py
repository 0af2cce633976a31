"""Anthropic routes through the running gateway, called with the official openai SDK."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fakes import anthropic_server as fake
from tests.fakes import openai_server as oa
from tests.fakes.anthropic_server import AnthropicFake
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
CANARY = "sk-ant-CANARY-e2e-7f3a9c1d5b"
MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture
def claude():
    with AnthropicFake(api_key=CANARY) as server:
        yield server


@pytest.fixture
def world(live_gateway, claude, biller):
    # biller: a recording stand-in, so these tests see exactly what the adapter reported
    return make_world([(claude, "anthropic", "claude-up", 0, 1)])


def client(live_gateway, world) -> openai.OpenAI:
    return world.client(f"{live_gateway.url}/v1")


def test_non_stream_answer_with_cache_usage(live_gateway, world, claude, biller):
    # given
    claude.script(fake.reply(text="Hello!", usage=fake.usage(input=25, output=7, cache_read=1000, cache_write=300)))
    # when
    resp = client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=100)
    # then: the client sees OpenAI's shape
    assert resp.choices[0].message.content == "Hello!" and resp.choices[0].finish_reason == "stop"
    assert resp.model == "chat"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (1325, 7)
    assert resp.usage.prompt_tokens_details.cached_tokens == 1000
    # and billing gets the normalized usage, cache reads and writes apart
    (_, outcome), = biller.wait_settled()
    u = outcome.usage
    assert (u.input_tokens, u.cached_input_tokens, u.cache_creation_tokens, u.output_tokens) == (25, 1000, 300, 7)
    assert not u.estimated
    # and the upstream got a Messages API call with its key in x-api-key
    sent = claude.requests[0]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == CANARY
    assert sent.json["model"] == "claude-up" and sent.json["system"] == "Be brief."
    assert sent.json["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]
    assert sent.json["max_tokens"] == 100


def test_stream_usage_is_cumulative_not_summed(live_gateway, world, claude, biller):
    # given: message_start says input 25; message_delta says output 10, then 30
    claude.script(fake.stream(text=["Hel", "lo", "!"], input_usage=fake.usage(input=25, cache_read=40),
                              output_steps=[10, 30]))
    # when
    chunks = list(client(live_gateway, world).chat.completions.create(
        model="chat", messages=MSG, stream=True, stream_options={"include_usage": True}))
    # then
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    assert chunks[-1].usage.prompt_tokens == 65 and chunks[-1].usage.prompt_tokens_details.cached_tokens == 40
    (_, outcome), = biller.wait_settled()
    assert (outcome.usage.input_tokens, outcome.usage.cached_input_tokens, outcome.usage.output_tokens) == (25, 40, 30)
    assert claude.requests[0].json["stream"] is True


def test_stream_without_include_usage_has_no_usage_chunk(live_gateway, world, claude, biller):
    chunks = list(client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.output_tokens == 12


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_tools_round_trip(live_gateway, world, claude, stream):
    # given: Claude asks for a tool
    if stream:
        claude.script(fake.stream(text=None, tool_calls=[("get_weather", ['{"city": ', '"Paris"}'])]))
    else:
        claude.script(fake.reply(text=None, tool_calls=[("get_weather", {"city": "Paris"})]))
    c = client(live_gateway, world)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    # when
    if stream:
        parts = list(c.chat.completions.create(model="chat", messages=messages, tools=TOOLS, stream=True))
        deltas = [d for p in parts if p.choices for d in (p.choices[0].delta.tool_calls or ())]
        call_id, name = deltas[0].id, deltas[0].function.name
        arguments = "".join(d.function.arguments or "" for d in deltas)
        finish = [p.choices[0].finish_reason for p in parts if p.choices][-1]
    else:
        resp = c.chat.completions.create(model="chat", messages=messages, tools=TOOLS, tool_choice="auto")
        call = resp.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        finish = resp.choices[0].finish_reason
    # then
    assert finish == "tool_calls" and name == "get_weather" and json.loads(arguments) == {"city": "Paris"}
    assert claude.requests[0].json["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]
    # when: the client sends the result back
    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"}]
    claude.script(fake.reply(text="It is 18C and sunny in Paris."))
    answer = c.chat.completions.create(model="chat", messages=messages, tools=TOOLS)
    # then
    assert answer.choices[0].message.content == "It is 18C and sunny in Paris."
    sent = claude.requests[1].json["messages"]
    assert sent[1] == {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": "get_weather",
                                                         "input": {"city": "Paris"}}]}
    assert sent[2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                                    "content": "18C and sunny"}]}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_overloaded_529_falls_back_to_another_route(live_gateway, claude, biller, stream):
    with oa.OpenAIFake(api_key="sk-backup") as backup:
        # given: Claude first, an OpenAI route as the next tier; Claude is overloaded
        world = make_world([(claude, "anthropic", "claude-up", 0, 1), (backup, "openai", "backup", 1, 1)])
        claude.script(fake.error(529, "overloaded_error", "Overloaded"))
        c = client(live_gateway, world)
        # when
        if stream:
            text = "".join(p.choices[0].delta.content or "" for p in c.chat.completions.create(
                model="chat", messages=MSG, stream=True) if p.choices)
        else:
            text = c.chat.completions.create(model="chat", messages=MSG).choices[0].message.content
        # then
        assert text == "Echo: Say hello"
        assert len(claude.requests) == 1 and len(backup.requests) == 1
        (_, outcome), = biller.wait_settled()
        assert [a["status"] for a in outcome.attempts] == [529, 200]


def test_error_event_before_any_content_falls_back(live_gateway, claude, biller):
    with AnthropicFake(api_key="sk-ant-second") as second:
        # given: the first route opens its stream, then reports overload before any text
        world = make_world([(claude, "anthropic", "claude-a", 0, 1), (second, "anthropic", "claude-b", 1, 1)])
        events = fake.stream_events()[:2] + [("error", json.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))]
        claude.script(fake.stream(events=events))
        # when
        chunks = list(client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, stream=True))
        # then: only the second route's answer, never spliced
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Claude."
        assert len(second.requests) == 1


@pytest.mark.parametrize("message,code", [("max_tokens: 999999 > 8192, which is the maximum", "invalid_request_error"),
                                          ("prompt is too long: 250000 tokens > 200000 maximum",
                                           "context_length_exceeded")])
def test_invalid_request_400_does_not_fall_back(live_gateway, claude, biller, message, code):
    with oa.OpenAIFake(api_key="sk-backup") as backup:
        world = make_world([(claude, "anthropic", "claude-up", 0, 1), (backup, "openai", "backup", 1, 1)])
        claude.script(fake.error(400, "invalid_request_error", message))
        with pytest.raises(openai.BadRequestError) as err:
            client(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
        assert err.value.status_code == 400 and err.value.body["code"] == code
        assert message in err.value.body["message"]
        assert backup.requests == []


def test_mid_stream_error_after_content_ends_with_error_event(live_gateway, world, claude, biller):
    # given: text has reached the client, then Anthropic fails
    claude.script(fake.stream_error_midway("overloaded_error", after=5, text=["Hel", "lo", " world"]))
    received = []
    # when
    with pytest.raises(openai.APIError):
        for c in client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, stream=True):
            received.append(c.choices[0].delta.content or "" if c.choices else "")
    # then: what was generated is charged (input as reported, output counted)
    assert "".join(received) == "Hello"
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.input_tokens == 25 and outcome.usage.output_tokens >= 1


def test_route_key_never_reaches_the_client(live_gateway, claude, biller):
    # given: the upstream rejects the key (and echoes things back)
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(fake.error(401, "authentication_error", f"invalid x-api-key {CANARY} at {claude.url}"))
    # when
    with pytest.raises(openai.APIStatusError) as err:
        client(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
    # then
    raw = err.value.response.text
    assert err.value.status_code >= 500
    assert CANARY not in raw and claude.url not in raw and "127.0.0.1" not in raw


def test_provider_base_url_ending_in_v1_works(live_gateway, claude, biller):
    # given: the merchant pasted https://api.anthropic.com/v1 as the base URL
    class WithV1:
        base_url = claude.url + "/v1/"
        api_key = CANARY

    world = make_world([(WithV1, "anthropic", "claude-up", 0, 1)])
    # when
    resp = client(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
    # then
    assert resp.choices[0].message.content == "Hello from Claude."
    assert [r.path for r in claude.requests] == ["/v1/messages"]
