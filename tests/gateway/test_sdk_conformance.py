"""What the official SDKs expect of an OpenAI-compatible base URL, through the running
gateway: models.retrieve, x-request-id, and conformance with OpenAI's published OpenAPI
document (github.com/openai/openai-openapi: ChatCompletionResponseMessage.refusal is
required and nullable; Error.code is a string)."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.fakes import anthropic_server as claude_fake
from tests.fakes import openai_server as oa
from tests.fakes.anthropic_server import AnthropicFake
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)


def test_models_retrieve(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    sdk = world.client(f"{live_gateway.url}/v1")
    model = sdk.models.retrieve("chat")
    assert (model.id, model.object) == ("chat", "model")
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("not-mine")
    assert err.value.code == "model_not_found"
    # with anthropic-version: Anthropic's model object and error shape
    claude = anthropic.Anthropic(base_url=live_gateway.url, api_key=world.secret, max_retries=0)
    assert claude.models.retrieve("chat").type == "model"
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.models.retrieve("not-mine")
    assert err.value.body["error"]["type"] == "not_found_error"


def test_x_request_id_header(live_gateway, openai_up, biller):
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    sdk = world.client(f"{live_gateway.url}/v1")
    resp = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert resp._request_id and resp._request_id == biller.settled[0][0].request_id
    raw = sdk.chat.completions.with_raw_response.create(model="chat", stream=True,
                                                        messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-request-id"] == raw.headers["x-tokenbill-request-id"]


def test_refusal_is_null_in_translated_answers(live_gateway, biller):
    with AnthropicFake(api_key="sk-ant-up") as claude:
        world = make_world([(claude, "anthropic", "claude-up", 0, 1)])
        claude.script(claude_fake.reply(text="Hi"))
        r = httpx.post(f"{live_gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {world.secret}"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    message = r.json()["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None and message["content"] == "Hi"
    # and the gateway's own answer (/tokenbill) too
    r = httpx.post(f"{live_gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {world.secret}"},
                   json={"model": "chat", "messages": [{"role": "user", "content": "/tokenbill"}]})
    assert r.json()["choices"][0]["message"]["refusal"] is None


def test_integer_error_code_is_answered_as_string(live_gateway, openai_up, biller):
    # vLLM's error body: {"object": "error", "message", "type", "param", "code": 400}
    # (vllm-project/vllm, vllm/entrypoints/openai/protocol.py ErrorResponse), here under "error"
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    openai_up.script(oa.json_reply({"error": {"message": "bad prompt", "type": "BadRequestError", "param": None,
                                              "code": 400}}, status=400))
    r = httpx.post(f"{live_gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {world.secret}"},
                   json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "400"


def test_legacy_completions(live_gateway, biller):
    from tests.fakes.gemini_server import GeminiFake
    from tests.fakes import gemini_server as gemini_fake

    # a chat-only upstream (Gemini) serves the legacy completions API through the chat path
    with GeminiFake(api_key="AIza-up") as gemini:
        world = make_world([(gemini, "gemini", "gemini-up", 0, 1)])
        gemini.script(gemini_fake.reply(text="Once upon a time"), gemini_fake.stream(text=["Once", " more"]))
        sdk = world.client(f"{live_gateway.url}/v1")
        done = sdk.completions.create(model="chat", prompt="Tell a story", max_tokens=20)
        assert done.object == "text_completion" and done.choices[0].text == "Once upon a time"
        assert done.id.startswith("cmpl-") and done.usage.completion_tokens > 0
        chunks = list(sdk.completions.create(model="chat", prompt="Again", max_tokens=20, stream=True,
                                             stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "Once more"
        assert chunks[-1].usage.completion_tokens > 0
    assert [ctx.endpoint for ctx, _ in biller.wait_settled(2)] == ["completions", "completions"]


def test_usage_cost_in_the_body(live_gateway, openai_up, biller):
    # RecordingBiller settles every call at 1234 micro-credits
    world = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    raw = world.client(f"{live_gateway.url}/v1").chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().usage.model_extra["cost"] == raw.headers["x-tokenbill-charge"] == "0.001234"
    # and the translated APIs carry it too (Responses' usage keeps it)
    resp = world.client(f"{live_gateway.url}/v1").responses.create(model="chat", input="hi")
    assert resp.usage.model_extra["cost"] == "0.001234"
