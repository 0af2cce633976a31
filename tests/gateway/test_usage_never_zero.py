"""Issue 15: usage is never zero by accident. One reader for every usage shape
(gateway/adapters/usage.py), and the proxy estimates (flagged) whenever an answer with
content comes with no usable usage; a stream's settle runs whatever its usage computation does."""

from __future__ import annotations

import json

import pytest

from gateway.adapters.usage import read_usage
from tests.fakes import anthropic_server as fake
from tests.fakes import openai_server as oa
from tests.fakes.anthropic_server import AnthropicFake
from tests.fakes.openai_server import OpenAIFake
from tests.fakes.server import json_reply, sse_reply
from tests.gateway.conftest import make_world

MSG = [{"role": "user", "content": "Say hello in a long and friendly way"}]


def _u(raw, flavor="openai"):
    usage, reasoning = read_usage(raw, flavor)
    return (usage.input_tokens, usage.cached_input_tokens, usage.cache_creation_tokens, usage.output_tokens,
            usage.estimated, reasoning)


# Shapes from the providers' API references (see gateway/adapters/usage.py for the URLs).
def test_the_reader_reads_every_documented_shape():
    # OpenAI chat: prompt includes cached reads
    assert _u({"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
               "prompt_tokens_details": {"cached_tokens": 10},
               "completion_tokens_details": {"reasoning_tokens": 3}}) == (20, 10, 0, 7, False, 3)
    # OpenAI Responses: input/output names, nested details
    assert _u({"input_tokens": 30, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 10},
               "output_tokens_details": {"reasoning_tokens": 2}}) == (20, 10, 0, 7, False, 2)
    # counts as strings (some OpenAI-compatible servers)
    assert _u({"prompt_tokens": "12", "completion_tokens": "5"}) == (12, 0, 0, 5, False, 0)
    # only a total: never 0, flagged
    assert _u({"total_tokens": 40}) == (40, 0, 0, 0, True, 0)
    # Anthropic: input excludes cache reads and writes
    assert _u({"input_tokens": 25, "output_tokens": 7, "cache_read_input_tokens": 1000,
               "cache_creation_input_tokens": 300}, "anthropic") == (25, 1000, 300, 7, False, 0)
    # Gemini: prompt includes cached content, thoughts count as output
    assert _u({"promptTokenCount": 50, "cachedContentTokenCount": 20, "candidatesTokenCount": 9,
               "thoughtsTokenCount": 4, "totalTokenCount": 63}, "gemini") == (30, 20, 0, 13, False, 4)
    assert _u({"totalTokenCount": 63}, "gemini") == (63, 0, 0, 0, True, 0)


@pytest.mark.parametrize("raw", [None, {}, {"foo": 1}, {"prompt_tokens": None, "completion_tokens": True},
                                 {"total_tokens": 0}, [], "12"])
def test_a_block_that_says_nothing_is_unknown_not_zero(raw):
    assert read_usage(raw) is None and read_usage(raw, "anthropic") is None and read_usage(raw, "gemini") is None


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def claude():
    with AnthropicFake() as server:
        yield server


@pytest.fixture
def gpt():
    with OpenAIFake() as server:
        yield server


def _without_usage(events):
    out = []
    for name, data in events:
        payload = json.loads(data)
        payload.pop("usage", None)
        if "message" in payload:
            payload["message"].pop("usage", None)
        out.append((name, json.dumps(payload)))
    return out


@pytestmark_db
@pytest.mark.parametrize("stream", [False, True])
def test_an_anthropic_answer_without_usage_is_estimated_not_free(live_gateway, claude, biller, stream):
    # given an Anthropic answer with content and no usage block
    world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
    if stream:
        claude.script(sse_reply(_without_usage(fake.stream_events(text=["Hello", " there", " friend"]))))
    else:
        message = fake.message(text="Hello there friend")
        del message["usage"]
        claude.script(json_reply(message))
    # when
    client = world.client(f"{live_gateway.url}/v1")
    if stream:
        list(client.chat.completions.create(model="chat", messages=MSG, stream=True, max_tokens=50))
    else:
        client.chat.completions.create(model="chat", messages=MSG, max_tokens=50)
    # then it is charged an estimate, flagged
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.estimated and outcome.usage.output_tokens > 0 and outcome.usage.input_tokens > 0


@pytestmark_db
@pytest.mark.parametrize("usage", [{"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                                   {"total_tokens": 42}])
def test_an_answer_with_content_and_implausible_usage_is_estimated(live_gateway, gpt, biller, usage):
    world = make_world([(gpt, "openai", "gpt-up", 0, 1)])
    gpt.script(oa.reply("Hello there, friend, nice to meet you", usage=usage))
    world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG, max_tokens=50)
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.estimated and outcome.usage.output_tokens > 0 and outcome.usage.input_tokens > 0


@pytestmark_db
def test_a_stream_whose_deltas_are_lists_of_parts_is_settled_and_charged(live_gateway, gpt, biller):
    # given an OpenAI-compatible server sending content as a list of parts, and no usage
    world = make_world([(gpt, "openai_compatible", "gpt-up", 0, 1)])
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up",
             "choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "Hello there friend"}]},
                          "finish_reason": None}]}
    end = dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    gpt.script(sse_reply([(None, json.dumps(chunk)), (None, json.dumps(end)), (None, "[DONE]")]))
    # when
    chunks = list(world.client(f"{live_gateway.url}/v1").chat.completions.create(
        model="chat", messages=MSG, stream=True, max_tokens=50))
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    # then the call is settled (no hold left to the sweep), on an estimate of what was sent
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.estimated and outcome.usage.output_tokens > 0


@pytestmark_db
def test_a_stream_is_settled_even_when_its_usage_cannot_be_computed(live_gateway, gpt, biller, monkeypatch):
    # given a stream whose usage computation fails (a tokenizer error, an unexpected part)
    from gateway import proxy

    def broken(*args, **kwargs):
        raise ValueError("tokenizer exploded")

    monkeypatch.setattr(proxy, "plausible_usage", broken)
    world = make_world([(gpt, "openai", "gpt-up", 0, 1)])
    gpt.script(oa.stream("Hello there friend"))
    # when
    list(world.client(f"{live_gateway.url}/v1").chat.completions.create(
        model="chat", messages=MSG, stream=True, max_tokens=50))
    # then it is settled anyway, on an estimate (no hold left for the sweep)
    (_, outcome), = biller.wait_settled()
    assert outcome.usage is not None and outcome.usage.estimated and outcome.usage.output_tokens > 0
