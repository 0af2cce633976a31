import json

import pytest

from gateway import tokens
from gateway.adapters.base import REGISTRY, SSEEvent, UpstreamError
from gateway.adapters.gemini import SIGNATURE_MARK, GeminiAdapter, model_url
from tests.fakes import drive
from tests.fakes import gemini_server as fake
from tests.fakes.gemini_server import GeminiFake

KEY = "AIza-canary-KEY-0123456789abcdef"
adapter = GeminiAdapter(kind="gemini")


@pytest.fixture
def upstream():
    with GeminiFake(api_key=KEY) as server:
        yield server


@pytest.fixture
def tgt(upstream):
    return drive.target("gemini", upstream.url, KEY, "gemini-fake-2.5")


def chat_body(**kw):
    return {"model": "gemini-fake-2.5", "messages": [{"role": "user", "content": "Hi"}], **kw}


def request_json(body):
    return adapter.chat_request(drive.target("gemini", "http://x", KEY), body, stream=False).json


# --- request translation --------------------------------------------------------------------


def test_registered_for_gemini_kind():
    assert isinstance(REGISTRY["gemini"], GeminiAdapter)


@pytest.mark.parametrize("base", ["https://generativelanguage.googleapis.com",
                                  "https://generativelanguage.googleapis.com/",
                                  "https://generativelanguage.googleapis.com/v1beta",
                                  "https://generativelanguage.googleapis.com/v1beta/"])
def test_urls_with_or_without_v1beta(base):
    root = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    assert model_url(base, "gemini-2.5-flash", "generateContent") == f"{root}:generateContent"
    assert model_url(base, "models/gemini-2.5-flash", "generateContent") == f"{root}:generateContent"


def test_key_goes_in_a_header_never_in_the_url():
    # when
    t = drive.target("gemini", "https://g.test", KEY, "gemini-2.5-flash")
    plain = adapter.chat_request(t, chat_body(model="gemini-2.5-flash"), stream=False)
    streamed = adapter.chat_request(t, chat_body(model="gemini-2.5-flash"), stream=True)
    # then
    assert plain.url == "https://g.test/v1beta/models/gemini-2.5-flash:generateContent"
    assert streamed.url == "https://g.test/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    for call in (plain, streamed):
        assert call.headers == {"x-goog-api-key": KEY, "content-type": "application/json"}
        assert KEY not in call.url and KEY not in json.dumps(call.json)


def test_roles_system_instruction_and_generation_config():
    # given
    body = chat_body(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "developer", "content": "Use French."},
        {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
    ], max_tokens=64, temperature=0.3, top_p=0.8, stop="END", n=2, response_format={"type": "json_object"})
    # when
    out = request_json(body)
    # then
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nUse French."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello!"}]},
        {"role": "user", "parts": [{"text": "How are you?"}]},
    ]
    assert out["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.3, "topP": 0.8,
                                       "stopSequences": ["END"], "candidateCount": 2,
                                       "responseMimeType": "application/json"}


def test_max_completion_tokens_wins_and_no_config_when_nothing_set():
    assert request_json(chat_body(max_tokens=5, max_completion_tokens=9))["generationConfig"] == {"maxOutputTokens": 9}
    assert "generationConfig" not in request_json(chat_body())


def test_images_become_inline_data_or_file_data():
    # given
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png?size=large"}}]
    # when
    out = request_json(chat_body(messages=[{"role": "user", "content": parts}]))
    # then
    assert out["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png?size=large"}},
    ]


def test_tools_tool_calls_and_function_responses():
    # given
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                       "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_1{SIGNATURE_MARK}c2lnLTE=", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": f"call_1{SIGNATURE_MARK}c2lnLTE=", "content": '{"temp_c": 18}'},
        {"role": "tool", "tool_call_id": "unknown", "name": "other", "content": "plain text"},
    ]
    # when
    out = request_json(chat_body(messages=messages, tools=tools,
                                 tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    # then
    assert out["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert out["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLTE="}]}
    assert out["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
        {"functionResponse": {"name": "other", "response": {"result": "plain text"}}}]}


@pytest.mark.parametrize("choice,mode", [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")])
def test_tool_choice_modes(choice, mode):
    assert request_json(chat_body(tool_choice=choice))["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


# --- non-stream against the fake ----------------------------------------------------------------


async def test_answer_with_thinking_and_cached_tokens(upstream, tgt):
    # given: 1200 prompt tokens of which 1000 cached; 8 answer + 30 thinking tokens
    upstream.script(fake.reply(text="Bonjour.", thought="The user greets me...",
                               usage=fake.usage(prompt=1200, cached=1000, candidates=8, thoughts=30)))
    # when
    body, usage = await drive.chat(adapter, tgt, chat_body())
    # then: thoughts are output, cached kept apart, input excludes cached
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_creation_tokens, usage.output_tokens) == \
        (200, 1000, 0, 38)
    assert not usage.estimated
    # thought summaries go apart, in the field OpenAI-compatible servers use for reasoning text
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Bonjour.", "refusal": None,
                                             "reasoning_content": "The user greets me..."}
    assert usage.reasoning_tokens == 30
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 1200, "completion_tokens": 38, "total_tokens": 1238,
                             "prompt_tokens_details": {"cached_tokens": 1000},
                             "completion_tokens_details": {"reasoning_tokens": 30}}
    sent = upstream.requests[0]
    assert sent.path == "/v1beta/models/gemini-fake-2.5:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY and "key" not in sent.query


async def test_default_answer_through_the_fakes_validation(upstream, tgt):
    body, usage = await drive.chat(adapter, tgt, chat_body())
    assert body["choices"][0]["message"]["content"] == "Hello from Gemini."
    assert usage.input_tokens == 20 and usage.output_tokens == 8


async def test_function_call_answer_keeps_its_thought_signature(upstream, tgt):
    # given
    upstream.script(fake.reply(text=None, function_calls=[("get_weather", {"city": "Paris"})], signature="c2ln"))
    # when
    body, _ = await drive.chat(adapter, tgt, chat_body())
    # then
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_") and call["id"].endswith(SIGNATURE_MARK + "c2ln")
    # and the id brings the signature back on the next turn
    follow = request_json(chat_body(messages=[{"role": "assistant", "tool_calls": [call]}]))
    assert follow["contents"][0]["parts"][0]["thoughtSignature"] == "c2ln"


@pytest.mark.parametrize("reason,expected", [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
                                             ("RECITATION", "content_filter"), ("OTHER", "stop")])
async def test_finish_reason_mapping(upstream, tgt, reason, expected):
    upstream.script(fake.reply(finish=reason))
    body, _ = await drive.chat(adapter, tgt, chat_body())
    assert body["choices"][0]["finish_reason"] == expected


async def test_several_candidates_become_several_choices(upstream, tgt):
    upstream.script(fake.reply(candidates=[fake.candidate(text="A", index=0), fake.candidate(text="B", index=1)]))
    body, _ = await drive.chat(adapter, tgt, chat_body(n=2))
    assert [(c["index"], c["message"]["content"]) for c in body["choices"]] == [(0, "A"), (1, "B")]
    assert upstream.requests[0].json["generationConfig"]["candidateCount"] == 2


def test_blocked_prompt_is_a_content_filter_answer():
    payload = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    body, usage = adapter.chat_response(drive.target("gemini", "http://x", KEY), payload)
    assert body["choices"][0]["finish_reason"] == "content_filter" and usage.input_tokens == 9


def test_malformed_answer_is_transient():
    with pytest.raises(UpstreamError) as err:
        adapter.chat_response(drive.target("gemini", "http://x", KEY), {"usageMetadata": {}})
    assert err.value.transient and err.value.status == 502


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status,gstatus,message,transient,code", [
    (400, "INVALID_ARGUMENT", "Invalid value at 'generation_config.temperature'", False, "INVALID_ARGUMENT"),
    (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
     False, "context_length_exceeded"),
    (400, "FAILED_PRECONDITION", "User location is not supported", False, "FAILED_PRECONDITION"),
    (403, "PERMISSION_DENIED", "Permission denied", True, "PERMISSION_DENIED"),
    (404, "NOT_FOUND", "models/nope is not found", True, "NOT_FOUND"),
    (429, "RESOURCE_EXHAUSTED", "Quota exceeded", True, "RESOURCE_EXHAUSTED"),
    (500, "INTERNAL", "An internal error has occurred.", True, "INTERNAL"),
    (503, "UNAVAILABLE", "The model is overloaded.", True, "UNAVAILABLE"),
    (504, "DEADLINE_EXCEEDED", "Deadline expired", True, "DEADLINE_EXCEEDED"),
])
async def test_error_matrix(upstream, tgt, status, gstatus, message, transient, code):
    # given
    upstream.script(fake.error(status, gstatus, message, retry_delay="17s"))
    # when
    with pytest.raises(UpstreamError) as err:
        await drive.chat(adapter, tgt, chat_body())
    # then
    e = err.value
    assert (e.status, e.transient, e.code) == (status, transient, code)
    if status in (429, 500, 503, 504):
        assert e.retry_after == 17.0
    if not transient:
        assert e.type == "invalid_request_error" and e.message == message


async def test_retry_after_header_wins_over_retry_info(upstream, tgt):
    upstream.script(fake.error(429, "RESOURCE_EXHAUSTED", "Quota", retry_after="4", retry_delay="17s"))
    with pytest.raises(UpstreamError) as err:
        await drive.chat(adapter, tgt, chat_body())
    assert err.value.retry_after == 4.0


async def test_wrong_key_is_the_routes_fault_not_the_clients(upstream):
    # given: Google answers a wrong key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID)
    tgt = drive.target("gemini", upstream.url, "AIza-wrong-canary-zzzzzzzzzzzz")
    # when
    with pytest.raises(UpstreamError) as err:
        await drive.chat(adapter, tgt, chat_body())
    # then
    assert err.value.status == 400 and err.value.transient
    assert "canary" not in err.value.message and upstream.url not in err.value.message


def test_list_wrapped_error_from_the_stream_endpoint_is_understood():
    body = json.dumps([{"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}]).encode()
    e = adapter.error_from(429, body, {})
    assert e.transient and e.code == "RESOURCE_EXHAUSTED"


# --- streaming --------------------------------------------------------------------------------


async def test_stream_text_usage_cumulative_with_thinking_and_cache(upstream, tgt):
    # given: every chunk reports cumulative usage; the last: 150 prompt (100 cached), 12 out, 40 thinking
    upstream.script(fake.stream(text=["Hel", "lo", "!"], thought="thinking...",
                                usage=fake.usage(prompt=150, cached=100, candidates=12, thoughts=40)))
    # when
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True)
    # then: the latest usage, not a sum of the chunks'
    u = out.decoder.usage
    assert (u.input_tokens, u.cached_input_tokens, u.output_tokens) == (50, 100, 52) and not u.estimated
    assert out.text == "Hello!" and out.decoder.done
    first, *_, finish, usage_chunk = out.chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 52
    assert usage_chunk["usage"]["prompt_tokens"] == 150
    assert usage_chunk["usage"]["completion_tokens_details"] == {"reasoning_tokens": 40}
    sent = upstream.requests[0]
    assert sent.path.endswith(":streamGenerateContent") and sent.query == {"alt": "sse"}


async def test_stream_without_include_usage_sends_no_usage_chunk(upstream, tgt):
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    assert all(c["choices"] for c in out.chunks)
    assert out.decoder.usage.output_tokens == 8


async def test_stream_function_calls(upstream, tgt):
    # given
    upstream.script(fake.stream(text=["Checking."], function_calls=[("get_weather", {"city": "Paris"}),
                                                                     ("get_time", {"tz": "CET"})]))
    # when
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    # then
    calls = [d for c in out.chunks for d in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (0, "get_weather", {"city": "Paris"}), (1, "get_time", {"tz": "CET"})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert out.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_error_chunk_is_transient(upstream, tgt):
    chunks = fake.stream_chunks()[:1] + [{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]
    upstream.script(fake.stream(chunks=chunks))
    with pytest.raises(UpstreamError) as err:
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    assert err.value.transient and err.value.status == 503


async def test_stream_malformed_chunk_is_transient(upstream, tgt):
    upstream.script(fake.stream(chunks=["{\"candidates\": [", "{}"]))
    with pytest.raises(UpstreamError) as err:
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=False)
    assert err.value.transient


async def test_stream_cut_midway_keeps_the_latest_reported_count(upstream, tgt):
    # given: the connection drops after two of four chunks (no finishReason arrived)
    chunks = fake.stream_chunks(text=["one two three ", "four five six ", "seven", " eight"],
                                usage_=fake.usage(prompt=30, candidates=40))
    upstream.script(fake.stream(chunks=chunks, drop_after=2))
    partial = drive.Streamed()
    # when
    with pytest.raises(Exception):
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True, out=partial)
    # then: Gemini's cumulative count of the second chunk is larger than our count of the text
    u = partial.decoder.usage
    assert not partial.decoder.done and u.input_tokens == 30
    assert u.output_tokens == chunks[1]["usageMetadata"]["candidatesTokenCount"]
    assert partial.decoder.text == "one two three four five six "


async def test_stream_cut_midway_estimates_output_the_upstream_did_not_report(upstream, tgt):
    # given: only the first chunk carried usage, then the connection dropped
    chunks = fake.stream_chunks(text=["one two three ", "four five six seven eight nine ten", "x"])
    chunks[0]["usageMetadata"] = {"promptTokenCount": 30, "candidatesTokenCount": 1}
    del chunks[1]["usageMetadata"]
    upstream.script(fake.stream(chunks=chunks, drop_after=2))
    partial = drive.Streamed()
    # when
    with pytest.raises(Exception):
        await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True, out=partial)
    # then
    u = partial.decoder.usage
    assert u.estimated and u.input_tokens == 30
    assert u.output_tokens == tokens.count_text("one two three four five six seven eight nine ten", "gemini")


async def test_stream_ending_without_finish_reason_is_not_done(upstream, tgt):
    chunks = fake.stream_chunks(text=["a", "b"])
    del chunks[-1]["candidates"][0]["finishReason"]
    upstream.script(fake.stream(chunks=chunks))
    out = await drive.chat_stream(adapter, tgt, chat_body(stream=True), include_usage=True)
    assert not out.decoder.done and all("usage" not in c for c in out.chunks)


# --- embeddings -------------------------------------------------------------------------------


async def test_embeddings_batch(upstream, tgt):
    # given
    body = {"model": "text-embedding-004", "input": ["hello world", "The quick brown fox jumps over the lazy dog."],
            "dimensions": 8}
    # when
    out, usage = await drive.embeddings(adapter, tgt, body, body=body)
    # then
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1]
    assert len(out["data"][0]["embedding"]) == 8 and out["data"][0]["embedding"] != out["data"][1]["embedding"]
    assert usage.estimated and usage.input_tokens == 12 and out["usage"] == {"prompt_tokens": 12, "total_tokens": 12}
    sent = upstream.requests[0]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    text = "The quick brown fox jumps over the lazy dog."
    assert sent.json["requests"][1] == {"model": "models/text-embedding-004", "outputDimensionality": 8,
                                        "content": {"parts": [{"text": text}]}}
    assert sent.headers["x-goog-api-key"] == KEY


async def test_embeddings_single_string(upstream, tgt):
    body = {"model": "text-embedding-004", "input": "hello world"}
    out, usage = await drive.embeddings(adapter, tgt, body)
    # the count made when the request was built (same task) is the estimate
    assert len(out["data"]) == 1 and usage.input_tokens == 2 and usage.estimated
    assert out["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert upstream.requests[0].path.endswith(":embedContent")
    assert upstream.requests[0].json == {"content": {"parts": [{"text": "hello world"}]}}


def test_embeddings_of_token_ids_are_refused_as_client_error():
    with pytest.raises(UpstreamError) as err:
        adapter.embeddings_request(drive.target("gemini", "http://x", KEY), {"model": "m", "input": [[1, 2]]})
    assert err.value.status == 400 and not err.value.transient


@pytest.mark.parametrize("bad", [{"tools": ["not-a-tool"]}, {"n": "two"}, {"messages": "hello"},
                                 {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}])
def test_untranslatable_requests_are_client_errors_not_route_failures(bad):
    with pytest.raises(UpstreamError) as err:
        adapter.chat_request(drive.target("gemini", "http://x", KEY), chat_body(**bad), stream=False)
    assert err.value.status == 400 and not err.value.transient


def test_stream_chunk_of_unexpected_shape_is_malformed_and_transient():
    decoder = adapter.stream_decoder(drive.target("gemini", "http://x", KEY), include_usage=False)
    with pytest.raises(UpstreamError) as err:
        decoder.feed(SSEEvent(data=json.dumps({"candidates": [{"content": {"parts": ["text"]}}]})))
    assert err.value.transient and err.value.status == 502


def test_embeddings_without_a_known_count_leave_usage_to_the_gateway():
    # given: an answer read in a task that never built the request
    import contextvars

    def read():
        return adapter.embeddings_response(drive.target("gemini", "http://x", KEY),
                                           {"embeddings": [{"values": [0.1, 0.2]}]})

    # when
    out, usage = contextvars.Context().run(read)
    # then
    assert usage is None and "usage" not in out and out["data"][0]["embedding"] == [0.1, 0.2]


async def test_concurrent_embeddings_calls_keep_their_own_counts(upstream, tgt):
    import asyncio

    # given: two calls in flight at once with different inputs
    small = {"model": "text-embedding-004", "input": ["hi"]}
    large = {"model": "text-embedding-004", "input": ["The quick brown fox jumps over the lazy dog."] * 3}
    # when
    (_, u1), (_, u2) = await asyncio.gather(drive.embeddings(adapter, tgt, small), drive.embeddings(adapter, tgt, large))
    # then
    assert (u1.input_tokens, u2.input_tokens) == (1, 30)
