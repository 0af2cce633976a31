"""A model of the wrong kind is refused with a message in plain English ("an embedding model")."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import make_world
from tests.gateway.test_gateway_basics import _assert_error, _post

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chat_call_to_an_embedding_model_says_an_embedding(live_gateway, openai_up):
    world = make_world([(openai_up, "openai", "chat-up", 0, 1)], model_name="chatty")
    r = _post(live_gateway, "/v1/embeddings", secret=world.secret, body={"model": "chatty", "input": "x"})
    _assert_error(r, 400, "model_not_supported")
    assert r.json()["error"]["message"] == "The model 'chatty' is not an embedding model."


def test_an_embedding_model_asked_for_chat_says_a_chat(live_gateway, openai_up):
    world = make_world([(openai_up, "openai", "embed-up", 0, 1)], model_name="embed", modality="embedding")
    r = _post(live_gateway, secret=world.secret, body={"model": "embed", "messages": [{"role": "user", "content": "x"}]})
    _assert_error(r, 400, "model_not_supported")
    assert r.json()["error"]["message"] == "The model 'embed' is not a chat model."
    assert openai_up.requests == []
