import json

import pytest

from gateway import tokens
from gateway.adapters.anthropic import AnthropicAdapter, messages_url
from gateway.adapters.base import REGISTRY, SSEEvent, UpstreamError
from routing import output_limits
from tests.fakes import anthropic_server as fake
from tests.fakes import drive
from tests.fakes.anthropic_server import AnthropicFake
from tests.fakes.server import drop, raw_reply

KEY = "sk-ant-canary-KEY-0123456789"
adapter = AnthropicAdapter(kind="anthropic")


@pytest.fixture
def upstream():
    with AnthropicFake(api_key=KEY) as server:
        yield server


@pytest.fixture
def tgt(upstream):
    return drive.target("anthropic", upstream.url, KEY, "claude-fake-4")


def chat_body(**kw):
    return {"model": "claude-fake-4", "messages": [{"role": "user", "content": "Hi"}], **kw}


# --- request translation --------------------------------------------------------------------


def test_registered_for_anthropic_kind():
    assert isinstance(REGISTRY["anthropic"], AnthropicAdapter)


@pytest.mark.parametrize("base", ["https://api.anthropic.com", "https://api.anthropic.com/",
                                  "https://api.anthropic.com/v1", "https://api.anthropic.com/v1/"])
def test_messages_url_with_or_without_v1(base):
    assert messages_url(base) == "https://api.anthropic.com/v1/messages"


def test_request_headers_carry_key_and_version():
    # when
    call = adapter.chat_request(drive.target("anthropic", "https://x.test", KEY), chat_body(), stream=False)
    # then
    assert call.method == "POST"
    assert call.headers == {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    assert KEY not in call.url and KEY not in json.dumps(call.json)


def test_system_messages_are_joined_and_turns_kept():
    # given
    body = chat_body(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "How are you?"},
    ])
    # when
    out = adapter.chat_request(drive.target("anthropic", "http://x", KEY), body, stream=False).json
    # then
    assert out["system"] == "Be brief.\n\nAnswer in French."
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][2]["content"] == [{"type": "text", "text": "How are you?"}]


def test_max_tokens_defaults_to_the_models_output_cap_and_max_completion_tokens_wins():
    # Anthropic requires max_tokens: with none from the client, the model's own cap (not 4096)
    t = drive.target("anthropic", "http://x", KEY)
    assert adapter.chat_request(t, chat_body(), stream=False).json["max_tokens"] == output_limits.FALLBACK_CAP
    sonnet = drive.target("anthropic", "http://x", KEY, "claude-sonnet-4-20250514")
    assert adapter.chat_request(sonnet, chat_body(), stream=False).json["max_tokens"] == 64_000
    configured = drive.target("anthropic", "http://x", KEY, "claude-sonnet-4-20250514", max_output_tokens=20_000)
    assert adapter.chat_request(configured, chat_body(), stream=False).json["max_tokens"] == 20_000
    assert adapter.chat_request(t, chat_body(max_tokens=50), stream=False).json["max_tokens"] == 50
    both = chat_body(max_tokens=50, max_completion_tokens=70)
    assert adapter.chat_request(t, both, stream=False).json["max_tokens"] == 70


def test_sampling_stop_and_stream_are_translated():
    # given
    t = drive.target("anthropic", "http://x", KEY)
    # when
    one = adapter.chat_request(t, chat_body(stop="END", temperature=0.2, top_p=0.9), stream=True).json
    many = adapter.chat_request(t, chat_body(stop=["a", "b"], temperature=1.7), stream=False).json
    # then
    assert one["stop_sequences"] == ["END"] and one["temperature"] == 0.2 and one["top_p"] == 0.9
    assert one["stream"] is True
    assert many["stop_sequences"] == ["a", "b"] and many["temperature"] == 1.0 and "stream" not in many


def test_images_become_base64_or_url_sources():
    # given
    parts = [{"type": "text", "text": "What is in these?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    # when
    out = adapter.chat_request(drive.target("anthropic", "http://x", KEY),
                               chat_body(messages=[{"role": "user", "content": parts}]), stream=False).json
    # then
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tools_tool_calls_and_tool_results_are_translated():
    # given
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "21C"}]},
    ]
    # when
    out = adapter.chat_request(drive.target("anthropic", "http://x", KEY),
                               chat_body(messages=messages, tools=tools, tool_choice="required",
                                         parallel_tool_calls=False), stream=False).json
    # then
    assert out["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                             "input_schema": tools[0]["function"]["parameters"]}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]}
    # both results in ONE user turn right after the tool calls
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "21C"}]}


def test_named_tool_choice():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = chat_body(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}})
    out = adapter.chat_request(drive.target("anthropic", "http://x", KEY), body, stream=False).json
    assert out["tool_choice"] == {"type": "tool", "name": "f"}


def test_invalid_tool_arguments_and_n_are_client_errors():
    t = drive.target("anthropic", "http://x", KEY)
    bad_call = {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{nope"}}]}
    with pytest.raises(UpstreamError) as err:
        adapter.chat_request(t, chat_body(messages=[bad_call]), stream=False)
    assert err.value.status == 400 and not err.value.transient
    with pytest.raises(UpstreamError) as err:
        adapter.chat_request(t, chat_body(n=2), stream=False)
    assert err.value.param == "n" and not err.value.transient


# --- non-stream against the fake ----------------------------------------------------------------


async def test_non_stream_answer_and_usage_with_cache(upstream, tgt):
    # given
    upstream.script(fake.reply(text="Bonjour.", usage=fake.usage(input=25, output=7, cache_read=1000,
                                                                 cache_write=300)))
    # when
    body, usage = await drive.chat(adapter, tgt, chat_body())
    # then
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Bonjour.", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_creation_tokens, usage.output_tokens) == \
        (25, 1000, 300, 7)
    assert not usage.estimated
    assert body["usage"] == {"prompt_tokens": 1325, "completion_tokens": 7, "total_tokens": 1332,
                             "prompt_tokens_details": {"cached_tokens": 1000}}
    sent = upstream.requests[0]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert KEY not in json.dumps(sent.json) and not sent.query


async def test_default_answer_through_the_fakes_validation(upstream, tgt):
    # when: nothing scripted, the fake checks path, key, version and max_tokens like the real API
    body, usage = await drive.chat(adapter, tgt, chat_body())
    # then
    assert body["choices"][0]["message"]["content"] == "Hello from Claude."
    assert usage.input_tokens == 25


async def test_base_url_with_v1_reaches_the_same_endpoint(upstream):
    # given
    tgt = drive.target("anthropic", upstream.url + "/v1/", KEY)
    # when
    body, _ = await drive.chat(adapter, tgt, chat_body())
    # then
    assert upstream.requests[0].path == "/v1/messages"


async def test_tool_use_answer_becomes_tool_calls(upstream, tgt):
    # given
    upstream.script(fake.reply(text=None, tool_calls=[("get_weather", {"city": "Paris"})]))
    # when
    body, _ = await drive.chat(adapter, tgt, chat_body())
    # then
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("toolu_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("reason,expected", [("end_turn", "stop"), ("max_tokens", "length"),
                                             ("stop_sequence", "stop"), ("tool_use", "tool_calls")])
async def test_finish_reason_mapping(upstream, tgt, reason, expected):
    upstream.script(fake.reply(stop_reason=reason))
    body, _ = await drive.chat(adapter, tgt, chat_body())
    assert body["choices"][0]["finish_reason"] == expected


async def test_wrong_key_is_transient_and_names_no_secret(upstream):
    # given: a route whose key the upstream rejects
    tgt = drive.target("anthropic", upstream.url, "sk-ant-wrong-canary-999999999")
    # when
    with pytest.raises(UpstreamError) as err:
        await drive.chat(adapter, tgt, chat_body())
    # then
    assert err.value.status == 401 and err.value.transient
    assert "canary" not in err.value.message and upstream.url not in err.value.message


def test_malformed_payload_is_transient():
    with pytest.raises(UpstreamError) as err:
        adapter.chat_response(drive.target("anthropic", "http://x", KEY), {"type": "message"})
    assert err.value.transient and err.value.status == 502


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status,etype,message,transient,code", [
    (400, "invalid_request_error", "temperature: must be <= 1", False, "invalid_request_error"),
    (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", False,
     "context_length_exceeded"),
    (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", False, "request_too_large"),
    (401, "authentication_error", "invalid x-api-key", True, "authentication_error"),
    (403, "permission_error", "Your API key does not have permission", True, "permission_error"),
    (404, "not_found_error", "model: claude-nope", True, "not_found_error"),
    (408, "timeout_error", "Request timed out", True, "timeout_error"),
    (409, "api_error", "conflict", True, "api_error"),
    (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", True,
     "rate_limit_error"),
    (500, "api_error", "Internal server error", True, "api_error"),
    (503, "api_error", "unavailable", True, "api_error"),
    (529, "overloaded_error", "Overloaded", True, "overloaded_error"),
])
async def test_error_matrix(upstream, tgt, status, etype, message, transient, code):
    # given
    upstream.script(fake.error(status, etype, message, retry_after="7"))
    # when
    with pytest.raises(UpstreamError) as err:
        await drive.chat(adapter, tgt, chat_body())
    # then
    e = err.value
    assert (e.status, e.transient, e.code) == (status, transient, code)
    if transient and status not in (401, 403, 404):
        assert e.retry_after == 7.0
    if not transient:
        assert e.type == "invalid_request_error" and e.message == message


def test_error_message_is_scrubbed_of_urls_and_keys():
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                  "message": "bad call to https://internal.example/v1 with "
                                                             "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"}}).encode()
    e = adapter.error_from(400, body, {})
    assert "internal.example" not in e.message and "abcdefghijklmnop" not in e.message


def test_error_without_json_body_is_still_an_error():
    e = adapter.error_from(502, b"<html>Bad gateway</html>", {"Retry-After": "3"})
    assert e.transient and e.retry_after == 3.0 and e.status == 502


async def test_dropped_connection_and_stall_reach_the_client_as_errors(upstream, tgt):
    # Adapters do no I/O: these reach the gateway as aiohttp errors, which it treats as transient.
    import aiohttp

    upstream.script(drop())
    with pytest.raises(aiohttp.ClientError):
        await drive.chat(adapter, tgt, chat_body())
    upstream.script(raw_reply(b"", status=200))
    with pytest.raises(Exception):
        await drive.chat(adapter, tgt, chat_body())
    assert len(upstream.requests) == 2


# --- streaming --------------------------------------------------------------------------------


async def test_stream_text_chunks_and_cumulative_usage(upstream, tgt):
    # given: input 25 in message_start; message_delta reports output 10, then 30 (cumulative)
    upstream.script(fake.stream(text=["Hel", "lo", "!"], input_usage=fake.usage(input=25, cache_read=40, cache_write=5),
                                output_steps=[10, 30]))
    # when
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True)
    # then: output is 30, not 40 (and not 31 with message_start's 1)
    u = out.decoder.usage
    assert (u.input_tokens, u.cached_input_tokens, u.cache_creation_tokens, u.output_tokens) == (25, 40, 5, 30)
    assert out.text == "Hello!" and out.decoder.text == "Hello!" and out.decoder.done
    first, *middle, finish, usage_chunk = out.chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == first["id"] for c in out.chunks)
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 70, "completion_tokens": 30, "total_tokens": 100,
                                    "prompt_tokens_details": {"cached_tokens": 40}}
    assert upstream.requests[0].json["stream"] is True


async def test_stream_input_repeated_in_message_delta_is_not_summed(upstream, tgt):
    # given
    upstream.script(fake.stream(input_usage=fake.usage(input=25, cache_read=40), output_steps=[10, 30],
                                repeat_input_in_delta=True))
    # when
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    # then
    u = out.decoder.usage
    assert (u.input_tokens, u.cached_input_tokens, u.output_tokens) == (25, 40, 30)


async def test_stream_without_include_usage_sends_no_usage_chunk(upstream, tgt):
    # when
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    # then: the usage is still known to the gateway for billing
    assert all(c["choices"] for c in out.chunks) and all("usage" not in c for c in out.chunks)
    assert out.decoder.usage.output_tokens == 12


async def test_stream_tool_calls(upstream, tgt):
    # given
    upstream.script(fake.stream(text=["Let me check."], tool_calls=[("get_weather", ['{"ci', 'ty": "Par', 'is"}']),
                                                                     ("get_time", ['{"tz": "CET"}'])]))
    # when
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    # then
    calls: dict[int, dict] = {}
    for c in out.chunks:
        for d in c["choices"][0]["delta"].get("tool_calls") or ():
            entry = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
            entry["id"] = d.get("id") or entry["id"]
            entry["name"] = (d.get("function") or {}).get("name") or entry["name"]
            entry["arguments"] += (d.get("function") or {}).get("arguments") or ""
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[1]["name"] == "get_time" and json.loads(calls[1]["arguments"]) == {"tz": "CET"}
    assert all(c["id"].startswith("toolu_") for c in calls.values())
    assert out.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert out.text == "Let me check."


async def test_stream_thinking_is_not_content_but_counts_as_output(upstream, tgt):
    upstream.script(fake.stream(thinking="Let me think...", text=["42"], output_steps=[50]))
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    assert out.text == "42" and out.decoder.usage.output_tokens == 50


async def test_stream_error_event_midway_is_transient(upstream, tgt):
    # given
    upstream.script(fake.stream_error_midway("overloaded_error", after=5, text=["Hel", "lo", "there"]))
    partial = drive.Streamed()
    # when
    with pytest.raises(UpstreamError) as err:
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True, out=partial)
    # then
    assert err.value.transient and err.value.status == 529
    assert partial.text == "Hello" and not partial.decoder.done
    assert partial.decoder.usage.input_tokens == 25


async def test_stream_cut_midway_leaves_decoder_not_done(upstream, tgt):
    # given
    upstream.script(fake.stream(text=["one ", "two ", "three"], drop_after=5))
    partial = drive.Streamed()
    # when
    with pytest.raises(Exception):
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True, out=partial)
    # then: what arrived is counted (message_start said output 1: stale), input as reported
    assert partial.decoder.text == "one two " and not partial.decoder.done
    u = partial.decoder.usage
    assert u.estimated and u.input_tokens == 25
    assert u.output_tokens == tokens.count_text("one two ", "claude-fake-4") > 1


async def test_error_right_after_message_start_sends_nothing_so_the_gateway_can_fall_back(upstream, tgt):
    # given: Anthropic opened the stream, then reported overload before any content
    events = fake.stream_events()[:2]
    events.append(("error", json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})))
    upstream.script(fake.stream(events=events))
    partial = drive.Streamed()
    # when
    with pytest.raises(UpstreamError) as err:
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True, out=partial)
    # then
    assert err.value.transient and partial.chunks == []


async def test_stream_cut_before_message_start_has_no_usage(upstream, tgt):
    upstream.script(fake.stream(drop_after=0))
    partial = drive.Streamed()
    with pytest.raises(Exception):
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True, out=partial)
    assert partial.decoder.usage is None


async def test_stream_malformed_event_is_transient(upstream, tgt):
    # given
    events = fake.stream_events()[:2] + [("content_block_delta", "{not json")]
    upstream.script(fake.stream(events=events))
    # when / then
    with pytest.raises(UpstreamError) as err:
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    assert err.value.transient


async def test_stream_ping_and_unknown_events_are_ignored(upstream, tgt):
    events = fake.stream_events(text=["ok"])
    events.insert(3, ("future_event", json.dumps({"type": "future_event", "x": 1})))
    upstream.script(fake.stream(events=events))
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    assert out.text == "ok" and out.decoder.done


@pytest.mark.parametrize("bad", [{"tools": ["not-a-tool"]}, {"temperature": "hot"}, {"n": "two"},
                                 {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                                 {"messages": "hello"}])
def test_untranslatable_requests_are_client_errors_not_route_failures(bad):
    # A 5xx (or a transient error) here would let a client trip the route's circuit breaker.
    with pytest.raises(UpstreamError) as err:
        adapter.chat_request(drive.target("anthropic", "http://x", KEY), chat_body(**bad), stream=False)
    assert err.value.status == 400 and not err.value.transient


def test_answer_of_unexpected_shape_is_malformed_and_transient():
    t = drive.target("anthropic", "http://x", KEY)
    with pytest.raises(UpstreamError) as err:
        adapter.chat_response(t, {"content": ["not a block"], "usage": {}})
    assert err.value.transient and err.value.status == 502
    decoder = adapter.stream_decoder(t, include_usage=False)
    with pytest.raises(UpstreamError) as err:
        decoder.feed(SSEEvent(data=json.dumps({"type": "content_block_delta", "index": 0, "delta": "x"})))
    assert err.value.transient


# --- reasoning_effort and structured outputs (request translation) ------------------------------


def test_reasoning_effort_is_a_thinking_budget_and_drops_sampling():
    call = adapter.chat_request(drive.target("anthropic", "https://x.test", KEY),
                                chat_body(max_tokens=10000, reasoning_effort="medium", temperature=0.2, top_p=0.5),
                                stream=False)
    assert call.json["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert "temperature" not in call.json and "top_p" not in call.json


def test_no_thinking_inside_a_tool_loop():
    # the previous turn's signed thinking block is not in an OpenAI history: Anthropic would refuse
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]
    call = adapter.chat_request(drive.target("anthropic", "https://x.test", KEY),
                                chat_body(messages=messages, max_tokens=10000, reasoning_effort="high"), stream=False)
    assert "thinking" not in call.json


def test_json_object_is_a_forced_tool_with_an_open_object_schema():
    call = adapter.chat_request(drive.target("anthropic", "https://x.test", KEY),
                                chat_body(max_tokens=100, response_format={"type": "json_object"}), stream=False)
    assert call.json["tools"][-1]["name"] == "structured_output"
    assert call.json["tools"][-1]["input_schema"]["type"] == "object"
    assert call.json["tool_choice"] == {"type": "tool", "name": "structured_output"}


def test_a_bad_response_format_is_the_clients_400():
    with pytest.raises(UpstreamError) as err:
        adapter.chat_request(drive.target("anthropic", "https://x.test", KEY),
                             chat_body(max_tokens=100, response_format={"type": "xml"}), stream=False)
    assert err.value.status == 400 and not err.value.transient and err.value.param == "response_format"
