"""Streaming through the gateway: usage strip, mid-stream failure, disconnect, Azure."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from gateway import fake_upstream
from tests.fakes import openai_server as up
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "stream me please"}]


def test_stream_without_include_usage_strips_usage_chunk(live_gateway, world_openai, openai_up):
    # when
    chunks = list(world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(
        model="chat", messages=MSG, stream=True))
    # then: the gateway asked upstream for usage, but the client sees none
    assert openai_up.requests[0].json["stream_options"] == {"include_usage": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: stream me please"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert {c.model for c in chunks} == {"chat"}


def test_stream_with_include_usage_keeps_usage(live_gateway, world_openai, biller):
    chunks = list(world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(
        model="chat", messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.output_tokens == 4 and not outcome.usage.estimated
    assert outcome.ttfb_ms is not None


def test_stream_failure_before_first_chunk_falls_back(live_gateway, openai_up):
    with up.OpenAIFake(api_key="sk-second") as second:
        world = make_world([(openai_up, "openai", "a", 0, 1), (second, "openai", "b", 1, 1)])
        openai_up.script(up.stream(malformed_at=0))
        chunks = list(world.client(f"{live_gateway.url}/v1").chat.completions.create(
            model="chat", messages=MSG, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: stream me please"
        assert len(second.requests) == 1


@pytest.mark.parametrize("behaviour", [up.stream(drop_after=3, delay=0.05), up.stream(malformed_at=3, delay=0.05)],
                         ids=["drop", "malformed"])
def test_failure_after_first_byte_ends_with_error_event_never_spliced(live_gateway, openai_up, biller, behaviour):
    with up.OpenAIFake(api_key="sk-second") as second:
        world = make_world([(openai_up, "openai", "a", 0, 1), (second, "openai", "b", 0, 1)])
        openai_up.script(behaviour)
        second.script(behaviour)
        stream = world.client(f"{live_gateway.url}/v1").chat.completions.create(
            model="chat", messages=MSG, stream=True)
        received = []
        with pytest.raises(openai.APIError):
            for chunk in stream:
                received.append(chunk)
        assert received  # the first bytes went out, then the error event
        assert len(openai_up.requests) + len(second.requests) == 1  # no second model spliced in
        (_, outcome), = biller.wait_settled()
        assert outcome.status == "upstream_error" and outcome.usage.estimated


def test_raw_error_event_shape(live_gateway, world_openai, openai_up):
    openai_up.script(up.stream(drop_after=2, delay=0.05))
    with httpx.stream("POST", f"{live_gateway.url}/v1/chat/completions",
                      headers={"authorization": f"Bearer {world_openai.secret}"},
                      json={"model": "chat", "messages": MSG, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "stream_interrupted" and set(error) >= {"message", "type", "param"}


def _raw_stream_request(secret: str) -> bytes:
    """A streamed chat call as bytes, for a client on a bare socket that can hang up."""
    body = json.dumps({"model": "chat", "messages": MSG, "stream": True}).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_client_disconnect_cancels_upstream_and_settles(live_gateway, world_openai, openai_up, biller):
    # given: an upstream that streams until someone hangs up
    openai_up.script(up.endless_stream(interval=0.01))
    request = _raw_stream_request(world_openai.secret)
    # when: the client reads a little and closes the socket
    with socket.create_connection(("127.0.0.1", live_gateway.port)) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"word") < 5:
            received += sock.recv(65536)
    # then: the upstream call is cancelled and the call settled once, as disconnected, with usage so far
    deadline = time.monotonic() + 5
    while (openai_up.cancelled == 0 or not biller.settled) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert openai_up.cancelled == 1
    (_, outcome), = biller.wait_settled()
    assert outcome.client_disconnected and outcome.status == "disconnected"
    assert outcome.usage.output_tokens >= 5 and outcome.usage.estimated


def test_client_gone_before_the_first_token_cancels_the_upstream_call(live_gateway, world_openai, openai_up, biller):
    # given: an upstream that thinks for a long time before its first token
    openai_up.script(up.thinking_stream(seconds=20))
    request = _raw_stream_request(world_openai.secret)
    # when: the client gives up before any byte came back
    with socket.create_connection(("127.0.0.1", live_gateway.port)) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 5
        while not openai_up.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    # then: the gateway closes the upstream call at once, not after 20 s of thinking
    deadline = time.monotonic() + 5
    while (openai_up.cancelled == 0 or not biller.settled) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert openai_up.cancelled == 1
    (_, outcome), = biller.wait_settled()
    assert outcome.client_disconnected and outcome.status == "disconnected" and outcome.route is None


def test_azure_non_stream_and_stream(live_gateway, azure_up):
    world = make_world([(azure_up, "azure_openai", "my-deployment", 0, 1)])
    client = world.client(f"{live_gateway.url}/v1")
    completion = client.chat.completions.create(model="chat", messages=MSG)
    chunks = list(client.chat.completions.create(model="chat", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert completion.choices[0].message.content == "Echo: stream me please"
    assert completion.usage.prompt_tokens > 0
    assert chunks[-1].usage.completion_tokens == 4
    for sent in azure_up.requests:
        assert sent.path == "/openai/deployments/my-deployment/chat/completions"
        assert sent.query["api-version"] == "2024-10-21"
        assert sent.headers["api-key"] == "azure-key-test"
        assert "authorization" not in sent.headers


def test_azure_embeddings(live_gateway, azure_up):
    world = make_world([(azure_up, "azure_openai", "emb-dep", 0, 1)], model_name="emb", modality="embedding")
    result = world.client(f"{live_gateway.url}/v1").embeddings.create(model="emb", input="hello")
    assert len(result.data) == 1
    assert azure_up.requests[0].path == "/openai/deployments/emb-dep/embeddings"


def test_openai_non_stream_usage_with_cached_tokens(live_gateway, world_openai, openai_up, biller):
    openai_up.script(up.reply("ok", usage={"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                                           "prompt_tokens_details": {"cached_tokens": 60}}))
    r = world_openai.client(f"{live_gateway.url}/v1").chat.completions.with_raw_response.create(
        model="chat", messages=MSG)
    assert r.headers["x-tokenbill-charge"] == "0.001234" and r.headers["x-tokenbill-balance"] == "0.005678"  # credits
    (_, outcome), = biller.wait_settled()
    assert (outcome.usage.input_tokens, outcome.usage.cached_input_tokens, outcome.usage.output_tokens) == (40, 60, 7)


def test_missing_usage_is_estimated(live_gateway, world_openai, openai_up, biller):
    openai_up.script(up.reply("four words right here", usage=False))
    world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    (_, outcome), = biller.wait_settled()
    assert outcome.usage.estimated and outcome.usage.output_tokens >= 4 and outcome.usage.input_tokens > 0


def test_bad_chunk_in_the_same_read_as_the_first_ends_with_error_after_the_good_ones(live_gateway, openai_up):
    # given: the broken chunk comes in the same network read as the first good ones
    with up.OpenAIFake(api_key="sk-second") as second:
        world = make_world([(openai_up, "openai", "a", 0, 1), (second, "openai", "b", 1, 1)])
        frames = fake_upstream.stream_events({"model": "a"}, "Hello", pieces=2)
        frames[2] = b'data: {"choices": [ broken\n\n'
        openai_up.script(up.raw_reply(b"".join(frames), content_type="text/event-stream"))
        received = []
        # when
        with pytest.raises(openai.APIError):
            for c in world.client(f"{live_gateway.url}/v1").chat.completions.create(
                    model="chat", messages=MSG, stream=True):
                received.append(c.choices[0].delta.content or "")
        # then: the good chunks went out first (the first one at once), no other model spliced in
        assert "".join(received) == "Hel"
        assert second.requests == []
