"""POST /v1/messages (Anthropic's Messages API) through the running gateway, called with
the official `anthropic` Python SDK, to each upstream kind.

Request and event shapes follow https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming; the upstream fakes'
answers are built from the providers' docs (tests/fakes/*_server.py name their sources).
"""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.fakes import anthropic_server as claude_fake
from tests.fakes import gemini_server as gemini_fake
from tests.fakes import openai_server as oa
from tests.fakes.anthropic_server import AnthropicFake
from tests.fakes.gemini_server import GeminiFake
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# A 1x1 PNG, base64 (the Messages API's image block: docs.anthropic.com/en/docs/build-with-claude/vision).
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


@pytest.fixture
def claude():
    with AnthropicFake(api_key="sk-ant-up") as server:
        yield server


@pytest.fixture
def gemini():
    with GeminiFake(api_key="AIza-up") as server:
        yield server


def sdk(live_gateway, world, base: str | None = None, **kw) -> anthropic.Anthropic:
    # The SDK appends /v1/messages to its base URL: the VE's base URL is {PUBLIC_BASE_URL}/<ve_id>.
    return anthropic.Anthropic(base_url=base or f"{live_gateway.url}/{world.ve.public_id}", api_key=world.secret,
                               max_retries=0, timeout=20, **kw)


# --- OpenAI-compatible upstream ----------------------------------------------------------------
def test_create_through_openai_upstream(live_gateway, openai_up, biller):
    # given
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    # when
    msg = sdk(live_gateway, world).messages.create(
        model="chat", max_tokens=50, system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Say hello"}], metadata={"user_id": "u-42"}, stop_sequences=["###"])
    # then: Anthropic's message shape
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "chat"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "Echo: Say hello"
    assert msg.stop_reason == "end_turn" and msg.id.startswith("msg_") and not msg.id.startswith("msg_msg_")
    # and the OpenAI upstream got the chat translation
    sent = openai_up.requests[0].json
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert (sent["max_tokens"], sent["stop"], sent["user"]) == (50, ["###"], "u-42")
    # and usage equals what billing got
    (ctx, outcome), = biller.wait_settled()
    assert ctx.endpoint == "messages"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (outcome.usage.input_tokens,
                                                                 outcome.usage.output_tokens)


def test_stream_through_openai_upstream(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    openai_up.script(oa.stream("Hello there, friend"))
    # when
    with sdk(live_gateway, world).messages.stream(model="chat", max_tokens=50,
                                                   messages=[{"role": "user", "content": "Hi"}]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    # then: Anthropic's event order, the text, cumulative usage in message_delta
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events and "message_delta" in events
    assert "".join(b.text for b in final.content if b.type == "text") == "Hello there, friend"
    assert final.stop_reason == "end_turn"
    (_, outcome), = biller.wait_settled()
    assert final.usage.output_tokens == outcome.usage.output_tokens > 0
    assert final.usage.input_tokens == outcome.usage.input_tokens > 0
    # and the upstream was asked for the usage chunk
    assert openai_up.requests[0].json["stream_options"] == {"include_usage": True}


def test_tools_round_trip_and_image(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    openai_up.script(oa.json_reply({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                     "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}))
    client = sdk(live_gateway, world)
    user = {"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "Weather where this photo was taken?"}]}
    # when: the model calls the tool
    msg = client.messages.create(model="chat", max_tokens=100, tools=[WEATHER], messages=[user],
                                 tool_choice={"type": "auto"})
    # then
    assert msg.stop_reason == "tool_use" and msg.id == "msg_abc"
    tool = msg.content[0]
    assert (tool.type, tool.id, tool.name, tool.input) == ("tool_use", "call_1", "get_weather", {"city": "Paris"})
    first = openai_up.requests[0].json
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert first["messages"][0]["content"][0] == {"type": "image_url",
                                                  "image_url": {"url": "data:image/png;base64," + PNG}}
    # when: the tool result goes back
    client.messages.create(model="chat", max_tokens=100, tools=[WEATHER], messages=[
        user, {"role": "assistant", "content": msg.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny"}]}])
    # then: chat's assistant tool_calls and tool message
    second = openai_up.requests[1].json["messages"]
    assert second[1]["tool_calls"][0]["id"] == "call_1"
    assert json.loads(second[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert second[2] == {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}


# --- Anthropic upstream ------------------------------------------------------------------------
def test_create_and_stream_through_anthropic_upstream(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(claude_fake.reply(text="Hi!", usage=claude_fake.usage(input=25, output=7, cache_read=100)),
                  claude_fake.stream(text=["Hel", "lo"], tool_calls=[("get_weather", ['{"city":', ' "Rome"}'])],
                                     input_usage=claude_fake.usage(input=11), output_steps=[3, 20]))
    client = sdk(live_gateway, world)
    # when
    msg = client.messages.create(model="chat", max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    # then: the cache read stays apart from input_tokens, as Anthropic reports it
    assert msg.content[0].text == "Hi!"
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (25, 100, 7)
    # when: a stream with text then a tool call
    with client.messages.stream(model="chat", max_tokens=64, tools=[WEATHER],
                                messages=[{"role": "user", "content": "Weather in Rome?"}]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Hello" and final.content[1].input == {"city": "Rome"}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 20
    sent = claude.requests[1].json
    assert sent["tools"][0]["input_schema"] == WEATHER["input_schema"] and sent["max_tokens"] == 64
    assert len(biller.wait_settled(2)) == 2


def test_agent_shaped_request(live_gateway, claude, biller):
    # A request shaped like a coding agent's: system block list with cache_control, many
    # tools, thinking, a previous turn's thinking block, streaming.
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(claude_fake.stream(text=["Done."], thinking="Let me think."))
    tools = [{**WEATHER, "name": f"tool_{i}"} for i in range(20)]
    system = [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "Project rules: " + "x" * 2000, "cache_control": {"type": "ephemeral"}}]
    history = [{"role": "user", "content": "Fix the bug"},
               {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
                                                 {"type": "text", "text": "Looking."}]},
               {"role": "user", "content": [{"type": "text", "text": "Go on", "cache_control": {"type": "ephemeral"}}]}]
    with sdk(live_gateway, world).messages.stream(model="chat", max_tokens=2048, system=system, tools=tools,
                                                   messages=history,
                                                   thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        text = stream.get_final_text()
    assert text == "Done."
    sent = claude.requests[0].json
    assert len(sent["tools"]) == 20 and sent["system"].startswith("You are an agent.")
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert len(biller.wait_settled()) == 1


# --- Gemini upstream ---------------------------------------------------------------------------
def test_create_and_stream_through_gemini_upstream(live_gateway, gemini, biller):
    world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
    gemini.script(gemini_fake.reply(text="Ciao!"), gemini_fake.stream(text=["Buon", "giorno"]))
    client = sdk(live_gateway, world)
    msg = client.messages.create(model="chat", max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    assert msg.content[0].text == "Ciao!" and msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
    with client.messages.stream(model="chat", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]) as s:
        assert s.get_final_text() == "Buongiorno"
    assert len(biller.wait_settled(2)) == 2


# --- base URL forms, auth, errors --------------------------------------------------------------
def test_key_only_base_url_and_bearer_auth(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    # the key-only form (the key names its VE), Authorization: Bearer instead of x-api-key
    client = anthropic.Anthropic(base_url=live_gateway.url, auth_token=world.secret, max_retries=0, timeout=20)
    msg = client.messages.create(model="chat", max_tokens=10, messages=[{"role": "user", "content": "Hey"}])
    assert msg.content[0].text == "Echo: Hey"


def test_errors_in_anthropic_shape(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    # a wrong key: 401 authentication_error
    bad = anthropic.Anthropic(base_url=live_gateway.url, api_key="tb-wrong", max_retries=0, timeout=20)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.create(model="chat", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["error"]["type"] == "authentication_error"
    # an unknown model: Anthropic's not_found_error or invalid_request_error, never OpenAI's shape
    with pytest.raises(anthropic.APIStatusError) as err:
        sdk(live_gateway, world).messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code in (400, 404) and err.value.response.json()["type"] == "error"
    # max_tokens missing: 400 invalid_request_error (raw request: the SDK would refuse it itself)
    r = httpx.post(f"{live_gateway.url}/v1/messages", headers={"x-api-key": world.secret, "anthropic-version": "2023-06-01"},
                   json={"model": "chat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "max_tokens: field required (a positive integer)"}}


def test_tokenbill_magic_answer_is_a_message(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    msg = sdk(live_gateway, world).messages.create(model="chat", max_tokens=10,
                                                   messages=[{"role": "user", "content": "/tokenbill"}])
    assert msg.type == "message" and msg.content[0].type == "text" and msg.content[0].text
    assert openai_up.requests == [] and biller.settled == []


def test_count_tokens_and_models(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    client = sdk(live_gateway, world)
    short = client.messages.count_tokens(model="chat", messages=[{"role": "user", "content": "Hi"}])
    long = client.messages.count_tokens(model="chat", messages=[{"role": "user", "content": "Hi " * 200}])
    assert 0 < short.input_tokens < long.input_tokens
    assert openai_up.requests == []  # counted locally
    # GET /v1/models with anthropic-version: Anthropic's list shape
    page = client.models.list()
    assert [m.id for m in page.data] == ["chat"] and page.data[0].type == "model"


def test_ve_host_base_url_for_both_apis(live_gateway, openai_up, biller, settings):
    # the VE named by the host <ve>.ve.<GATEWAY_BASE_DOMAIN>
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    host = f"{world.ve.public_id}.ve.{settings.GATEWAY_BASE_DOMAIN}"
    msg = anthropic.Anthropic(base_url=live_gateway.url, api_key=world.secret, max_retries=0,
                              default_headers={"Host": host}).messages.create(
        model="chat", max_tokens=10, messages=[{"role": "user", "content": "via host"}])
    assert msg.content[0].text == "Echo: via host"
    resp = world.client(f"{live_gateway.url}/v1", default_headers={"Host": host}).responses.create(
        model="chat", input="via host too")
    assert resp.output_text == "Echo: via host too"


def test_failure_mid_stream_is_an_error_event(live_gateway, claude, biller):
    # after the first byte there is no fallback: the stream ends with Anthropic's `error` event
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(claude_fake.stream_error_midway(after=4))
    with pytest.raises(anthropic.APIStatusError) as err:
        with sdk(live_gateway, world).messages.stream(model="chat", max_tokens=10,
                                                       messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "api_error"
    (_, outcome), = biller.wait_settled()
    assert outcome.error_code == "stream_interrupted"
