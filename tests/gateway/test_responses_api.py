"""POST /v1/responses (OpenAI's Responses API) through the running gateway, called with the
official openai SDK (responses.create, responses.stream, responses.parse), to each upstream
kind. Shapes: https://platform.openai.com/docs/api-reference/responses and
https://platform.openai.com/docs/api-reference/responses-streaming."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.fakes import anthropic_server as claude_fake
from tests.fakes import gemini_server as gemini_fake
from tests.fakes import openai_server as oa
from tests.fakes.anthropic_server import AnthropicFake
from tests.fakes.gemini_server import GeminiFake
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class City(BaseModel):
    name: str
    country: str


@pytest.fixture
def claude():
    with AnthropicFake(api_key="sk-ant-up") as server:
        yield server


@pytest.fixture
def gemini():
    with GeminiFake(api_key="AIza-up") as server:
        yield server


def client(live_gateway, world) -> openai.OpenAI:
    return world.client(f"{live_gateway.url}/{world.ve.public_id}/v1")


def test_create_through_openai_upstream(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    resp = client(live_gateway, world).responses.create(model="chat", input="Say hello", instructions="Be brief.",
                                                        max_output_tokens=50, store=True,
                                                        metadata={"run_id": "run-9"})
    assert resp.object == "response" and resp.status == "completed" and resp.model == "chat"
    assert resp.output_text == "Echo: Say hello" and resp.id.startswith("resp_")
    assert resp.output[0].type == "message" and resp.output[0].content[0].type == "output_text"
    sent = openai_up.requests[0].json
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert sent["max_tokens"] == 50 and "store" not in sent
    (ctx, outcome), = biller.wait_settled()
    assert ctx.endpoint == "responses" and ctx.run_id == "run-9"
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (outcome.usage.input_tokens,
                                                                   outcome.usage.output_tokens)


def test_stream_through_openai_upstream(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    openai_up.script(oa.stream("Hello there, friend"))
    with client(live_gateway, world).responses.stream(model="chat", input="Hi") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_item.added" in kinds
    assert final.output_text == "Hello there, friend" and final.usage.output_tokens > 0
    (_, outcome), = biller.wait_settled()
    assert final.usage.output_tokens == outcome.usage.output_tokens


def test_function_calling_round_trip(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    openai_up.script(oa.json_reply({
        "id": "chatcmpl-x1", "object": "chat.completion", "created": 1, "model": "gpt-up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                     "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}))
    sdk = client(live_gateway, world)
    resp = sdk.responses.create(model="chat", input="Weather in Oslo?", tools=[WEATHER])
    item = resp.output[0]
    assert (item.type, item.call_id, item.name, json.loads(item.arguments)) == (
        "function_call", "call_7", "get_weather", {"city": "Oslo"})
    assert openai_up.requests[0].json["tools"][0]["function"]["name"] == "get_weather"
    # the result goes back as items
    sdk.responses.create(model="chat", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "call_7", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_7", "output": "-3 C"}])
    sent = openai_up.requests[1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_7"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_7", "content": "-3 C"}


def test_structured_output(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    openai_up.script(oa.reply('{"name": "Oslo", "country": "Norway"}'))
    parsed = client(live_gateway, world).responses.parse(model="chat", input="A city", text_format=City)
    assert parsed.output_parsed == City(name="Oslo", country="Norway")
    fmt = openai_up.requests[0].json["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["schema"]["properties"].keys() == {"name", "country"}


def test_stream_function_call_through_anthropic_upstream(live_gateway, claude, biller):
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    claude.script(claude_fake.stream(text=["Checking"], tool_calls=[("get_weather", ['{"city":', '"Rome"}'])],
                                     output_steps=[4, 17]))
    with client(live_gateway, world).responses.stream(model="chat", input="Rome?", tools=[WEATHER]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output_text == "Checking" and json.loads(final.output[1].arguments) == {"city": "Rome"}
    assert final.usage.output_tokens == 17


def test_create_through_gemini_upstream(live_gateway, gemini, biller):
    world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
    gemini.script(gemini_fake.reply(text="Ciao!"))
    resp = client(live_gateway, world).responses.create(model="chat", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    assert resp.output_text == "Ciao!" and resp.usage.output_tokens > 0


def test_previous_response_id_is_refused(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    with pytest.raises(openai.BadRequestError) as err:
        client(live_gateway, world).responses.create(model="chat", input="again", previous_response_id="resp_123")
    assert err.value.param == "previous_response_id" and "stateless" in err.value.message
    assert openai_up.requests == []
