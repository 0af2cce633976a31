"""Gemini routes through the running gateway, called with the official openai SDK."""

from __future__ import annotations

import json

import openai
import pytest

from gateway import tokens
from tests.fakes import gemini_server as fake
from tests.fakes import openai_server as oa
from tests.fakes.gemini_server import GeminiFake
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
CANARY = "AIza-CANARY-e2e-91b2c3d4e5f6"
MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"], "additionalProperties": False}}}]


@pytest.fixture
def gemini():
    with GeminiFake(api_key=CANARY) as server:
        yield server


@pytest.fixture
def world(live_gateway, gemini, biller):
    # biller: a recording stand-in, so these tests see exactly what the adapter reported
    return make_world([(gemini, "gemini", "gemini-up", 0, 1)])


def client(live_gateway, world) -> openai.OpenAI:
    return world.client(f"{live_gateway.url}/v1")


def test_non_stream_thinking_is_output_and_cached_kept_apart(live_gateway, world, gemini, biller):
    # given: 1200 prompt tokens (1000 of them cached), 8 answer + 30 thinking
    gemini.script(fake.reply(text="Hello!", thought="greeting...",
                             usage=fake.usage(prompt=1200, cached=1000, candidates=8, thoughts=30)))
    # when
    resp = client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, max_tokens=50)
    # then
    assert resp.choices[0].message.content == "Hello!" and resp.model == "chat"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (1200, 38)
    assert resp.usage.prompt_tokens_details.cached_tokens == 1000
    assert resp.usage.completion_tokens_details.reasoning_tokens == 30
    (_, outcome), = biller.wait_settled()
    u = outcome.usage
    assert (u.input_tokens, u.cached_input_tokens, u.output_tokens) == (200, 1000, 38) and not u.estimated
    sent = gemini.requests[0]
    assert sent.path == "/v1beta/models/gemini-up:generateContent"
    assert sent.headers["x-goog-api-key"] == CANARY and not sent.query
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent.json["generationConfig"]["maxOutputTokens"] == 50


def test_stream_usage_is_the_latest_not_a_sum(live_gateway, world, gemini, biller):
    # given
    gemini.script(fake.stream(text=["Hel", "lo", "!"], thought="hmm",
                              usage=fake.usage(prompt=150, cached=100, candidates=12, thoughts=40)))
    # when
    chunks = list(client(live_gateway, world).chat.completions.create(
        model="chat", messages=MSG, stream=True, stream_options={"include_usage": True}))
    # then
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 52
    (_, outcome), = biller.wait_settled()
    u = outcome.usage
    assert (u.input_tokens, u.cached_input_tokens, u.output_tokens) == (50, 100, 52) and not u.estimated
    assert gemini.requests[0].path.endswith(":streamGenerateContent") and gemini.requests[0].query == {"alt": "sse"}


def test_stream_without_include_usage_has_no_usage_chunk(live_gateway, world, gemini, biller):
    chunks = list(client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.output_tokens == 8


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_tools_round_trip(live_gateway, world, gemini, stream):
    # given: Gemini calls a function (with a thought signature to be echoed back)
    if stream:
        gemini.script(fake.stream(text=[], function_calls=[("get_weather", {"city": "Paris"})], signature="c2ln"))
    else:
        gemini.script(fake.reply(text=None, function_calls=[("get_weather", {"city": "Paris"})], signature="c2ln"))
    c = client(live_gateway, world)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    # when
    if stream:
        parts = list(c.chat.completions.create(model="chat", messages=messages, tools=TOOLS, stream=True))
        deltas = [d for p in parts if p.choices for d in (p.choices[0].delta.tool_calls or ())]
        call_id, name, arguments = deltas[0].id, deltas[0].function.name, deltas[0].function.arguments
        finish = [p.choices[0].finish_reason for p in parts if p.choices][-1]
    else:
        resp = c.chat.completions.create(model="chat", messages=messages, tools=TOOLS, tool_choice="required")
        call = resp.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        finish = resp.choices[0].finish_reason
    # then
    assert finish == "tool_calls" and name == "get_weather" and json.loads(arguments) == {"city": "Paris"}
    declared = gemini.requests[0].json["tools"][0]["functionDeclarations"][0]
    assert declared["name"] == "get_weather" and "additionalProperties" not in declared["parameters"]
    # when: the client sends the result back
    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 18}'}]
    gemini.script(fake.reply(text="18C in Paris."))
    answer = c.chat.completions.create(model="chat", messages=messages, tools=TOOLS)
    # then
    assert answer.choices[0].message.content == "18C in Paris."
    contents = gemini.requests[1].json["contents"]
    assert contents[1] == {"role": "model", "parts": [{"functionCall": {"name": "get_weather",
                                                                        "args": {"city": "Paris"}},
                                                       "thoughtSignature": "c2ln"}]}
    assert contents[2] == {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                                           "response": {"temp_c": 18}}}]}


@pytest.mark.parametrize("status,gstatus", [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (500, "INTERNAL")])
def test_transient_errors_fall_back(live_gateway, gemini, biller, status, gstatus):
    with oa.OpenAIFake(api_key="sk-backup") as backup:
        world = make_world([(gemini, "gemini", "gemini-up", 0, 1), (backup, "openai", "backup", 1, 1)])
        gemini.script(fake.error(status, gstatus, "try later"))
        resp = client(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
        assert resp.choices[0].message.content == "Echo: Say hello"
        assert len(backup.requests) == 1
        (_, outcome), = biller.wait_settled()
        assert [a["status"] for a in outcome.attempts] == [status, 200]


def test_invalid_argument_does_not_fall_back(live_gateway, gemini, biller):
    with oa.OpenAIFake(api_key="sk-backup") as backup:
        world = make_world([(gemini, "gemini", "gemini-up", 0, 1), (backup, "openai", "backup", 1, 1)])
        gemini.script(fake.error(400, "INVALID_ARGUMENT", "Invalid value at 'generation_config.top_p'"))
        with pytest.raises(openai.BadRequestError) as err:
            client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, top_p=7)
        assert err.value.body["code"] == "INVALID_ARGUMENT" and "top_p" in err.value.body["message"]
        assert backup.requests == []


def test_wrong_key_falls_back_and_never_reaches_the_client(live_gateway, biller):
    with GeminiFake(api_key="AIza-the-right-one") as gemini, oa.OpenAIFake(api_key="sk-backup") as backup:
        # given: a route configured with a key Google rejects (400 API_KEY_INVALID)
        world = make_world([(gemini, "gemini", "gemini-up", 0, 1), (backup, "openai", "backup", 1, 1)])
        gemini.api_key = "AIza-something-else"
        # when
        resp = client(live_gateway, world).chat.completions.create(model="chat", messages=MSG)
        # then
        assert resp.choices[0].message.content == "Echo: Say hello"
        assert "AIza-the-right-one" not in resp.model_dump_json()


def test_embeddings(live_gateway, gemini, biller):
    # given
    world = make_world([(gemini, "gemini", "text-embedding-004", 0, 1)], model_name="embed", modality="embedding")
    inputs = ["hello world", "The quick brown fox jumps over the lazy dog."]
    # when
    resp = client(live_gateway, world).embeddings.create(model="embed", input=inputs)
    # then
    assert [d.index for d in resp.data] == [0, 1] and len(resp.data[0].embedding) == 8
    assert (resp.usage.prompt_tokens, resp.usage.total_tokens) == (12, 12)
    sent = gemini.requests[0]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert [r["content"]["parts"][0]["text"] for r in sent.json["requests"]] == inputs
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.estimated
    assert outcome.usage.input_tokens == tokens.count_content(inputs, "text-embedding-004") == 12


def test_stream_cut_after_content_is_charged_for_what_was_generated(live_gateway, world, gemini, biller):
    # given: two chunks reach the client, then the connection drops (no finishReason)
    chunks = fake.stream_chunks(text=["one two three ", "four five six ", "seven"])
    chunks[0]["usageMetadata"] = {"promptTokenCount": 30, "candidatesTokenCount": 1}
    del chunks[1]["usageMetadata"]
    gemini.script(fake.stream(chunks=chunks, drop_after=2))
    received = []
    # when
    with pytest.raises(openai.APIError):
        for c in client(live_gateway, world).chat.completions.create(model="chat", messages=MSG, stream=True):
            received.append(c.choices[0].delta.content or "" if c.choices else "")
    # then: never spliced with anything else; charged for the text that was generated
    assert "".join(received) == "one two three four five six "
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.estimated and outcome.usage.input_tokens == 30
    assert outcome.usage.output_tokens == tokens.count_text("one two three four five six ", "gemini-up")
