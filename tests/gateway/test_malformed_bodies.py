"""Malformed request bodies through the live gateway: always a 4xx in the OpenAI error
shape (or a 200 where the body is still valid), never a 500 and never an upstream URL."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)

MSG = [{"role": "user", "content": "hi"}]

CHAT_BODIES = [
    [],
    "a string",
    123,
    None,
    {"model": 5, "messages": MSG},
    {"model": None, "messages": MSG},
    {"model": ["chat"], "messages": MSG},
    {"model": {"x": 1}, "messages": MSG},
    {"model": "chat"},
    {"model": "chat", "messages": None},
    {"model": "chat", "messages": "hi"},
    {"model": "chat", "messages": {"role": "user"}},
    {"model": "chat", "messages": []},
    {"model": "chat", "messages": [None]},
    {"model": "chat", "messages": ["hi"]},
    {"model": "chat", "messages": [1, 2]},
    {"model": "chat", "messages": [{"role": 5, "content": "hi"}]},
    {"model": "chat", "messages": [{"content": "hi"}]},
    {"model": "chat", "messages": [{"role": "user"}]},
    {"model": "chat", "messages": [{"role": "user", "content": 5}]},
    {"model": "chat", "messages": [{"role": "user", "content": 1.5}]},
    {"model": "chat", "messages": [{"role": "user", "content": True}]},
    {"model": "chat", "messages": [{"role": "user", "content": {"a": 1}}]},
    {"model": "chat", "messages": [{"role": "user", "content": [5]}]},
    {"model": "chat", "messages": [{"role": "user", "content": [None]}]},
    {"model": "chat", "messages": [{"role": "user", "content": ["text"]}]},
    {"model": "chat", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"model": "chat", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    {"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    {"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
    {"model": "chat", "messages": [{"role": "user", "content": [{"type": 7}]}]},
    {"model": "chat", "messages": [{"role": "user", "content": "/tokenbill", "name": 5}]},
    {"model": "chat", "messages": [{"role": "user", "content": [{"type": "text", "text": "/tokenbill"}]}]},
    {"model": "chat", "messages": MSG, "stream": "yes"},
    {"model": "chat", "messages": MSG, "stream": 1},
    {"model": "chat", "messages": MSG, "stream": None},
    {"model": "chat", "messages": MSG, "stream": True, "stream_options": "x"},
    {"model": "chat", "messages": MSG, "stream": True, "stream_options": [1]},
    {"model": "chat", "messages": MSG, "stream": True, "stream_options": {"include_usage": "no"}},
    {"model": "chat", "messages": MSG, "stream_options": {"include_usage": True}},
    {"model": "chat", "messages": MSG, "n": 10**9},
    {"model": "chat", "messages": MSG, "n": -1},
    {"model": "chat", "messages": MSG, "n": 0},
    {"model": "chat", "messages": MSG, "n": "2"},
    {"model": "chat", "messages": MSG, "n": 2.5},
    {"model": "chat", "messages": MSG, "max_tokens": 10**30},
    {"model": "chat", "messages": MSG, "max_tokens": -5},
    {"model": "chat", "messages": MSG, "max_tokens": 0},
    {"model": "chat", "messages": MSG, "max_tokens": "100"},
    {"model": "chat", "messages": MSG, "max_tokens": 1e308},
    {"model": "chat", "messages": MSG, "max_tokens": True},
    {"model": "chat", "messages": MSG, "max_completion_tokens": 10**30},
    {"model": "chat", "messages": MSG, "max_completion_tokens": "x"},
    {"model": "chat", "messages": MSG, "temperature": "hot"},
    {"model": "chat", "messages": MSG, "temperature": 10**400 if False else 1e308},
    {"model": "chat", "messages": MSG, "tools": "x"},
    {"model": "chat", "messages": MSG, "tools": {"type": "function"}},
    {"model": "chat", "messages": MSG, "tools": [5]},
    {"model": "chat", "messages": MSG, "tools": [{"type": "function"}]},
    {"model": "chat", "messages": MSG, "tools": [{"type": "function", "function": 5}]},
    {"model": "chat", "messages": MSG, "tool_choice": 5},
    {"model": "chat", "messages": MSG, "metadata": "x"},
    {"model": "chat", "messages": MSG, "metadata": [1]},
    {"model": "chat", "messages": MSG, "metadata": {"run_id": 5}},
    {"model": "chat", "messages": MSG, "metadata": {"run_id": {"a": 1}}},
    {"model": "chat", "messages": MSG, "metadata": {"run_id": "x" * 10000}},
    {"model": "chat", "messages": MSG, "stop": 5},
    {"model": "chat", "messages": MSG, "response_format": "json"},
    {"model": "chat", "messages": MSG, "user": 5},
    {"model": "chat", "messages": MSG, "logit_bias": "x"},
    {"model": "chat", "messages": MSG, "seed": 10**30},
]

RAW_BODIES = [b"", b"{", b"\xff\xfe", b'{"model": "chat", "messages": [', b"NaN", b'{"model": "chat", "messages": NaN}',
              b'{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":Infinity}',
              b'{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":1e999}']

EMBEDDING_BODIES = [
    {"model": "chat", "input": None},
    {"model": "chat", "input": 5},
    {"model": "chat", "input": [None]},
    {"model": "chat", "input": [[None]]},
    {"model": "chat", "input": {"a": 1}},
    {"model": "chat", "input": [["x"]]},
    {"model": "chat", "input": []},
    {"model": "chat", "input": "hi", "dimensions": "x"},
    {"model": "chat", "input": "hi", "encoding_format": 5},
]

MEDIA = [
    ("/images/generations", {"model": "chat", "prompt": 5}),
    ("/images/generations", {"model": "chat", "prompt": "x", "n": 10**30}),
    ("/images/generations", {"model": "chat", "prompt": "x", "n": "2"}),
    ("/images/generations", {"model": "chat", "prompt": "x", "size": 5}),
    ("/images/generations", {"model": "chat", "prompt": "x", "quality": ["hd"]}),
    ("/images/generations", []),
    ("/audio/speech", {"model": "chat", "input": 5, "voice": "alloy"}),
    ("/audio/speech", {"model": "chat", "input": "hi", "voice": 5}),
    ("/audio/speech", {"model": "chat", "input": "hi", "voice": "alloy", "speed": "fast"}),
    ("/audio/speech", {"model": "chat", "input": "hi", "voice": "alloy", "response_format": 5}),
    ("/audio/speech", []),
]


def _assert_not_500(response: httpx.Response, what) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"message", "type", "code", "param"} <= set(error), (what, error)
        assert "127.0.0.1" not in error["message"], (what, error)


@pytest.fixture
def fuzz_world(live_gateway, openai_up):
    return make_world([(openai_up, "openai", "gpt-up", 0, 1)])


def _post(client, url, world, **kw):
    return client.post(url, headers={"Authorization": f"Bearer {world.secret}", **kw.pop("headers", {})}, **kw)


def test_malformed_chat_bodies_are_4xx_never_500(live_gateway, fuzz_world):
    url = f"{live_gateway.url}/{fuzz_world.ve.public_id}/v1/chat/completions"
    failures = []
    with httpx.Client(timeout=20) as client:
        for body in CHAT_BODIES:
            response = _post(client, url, fuzz_world, content=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            try:
                _assert_not_500(response, body)
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(repr(exc)[:400])
        for raw in RAW_BODIES:
            response = _post(client, url, fuzz_world, content=raw, headers={"Content-Type": "application/json"})
            try:
                _assert_not_500(response, raw)
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(repr(exc)[:400])
    assert not failures, "\n".join(failures)


def test_malformed_embedding_and_media_bodies_are_4xx_never_500(live_gateway, fuzz_world):
    base = f"{live_gateway.url}/{fuzz_world.ve.public_id}/v1"
    failures = []
    with httpx.Client(timeout=20) as client:
        cases = [("/embeddings", b) for b in EMBEDDING_BODIES] + MEDIA
        for path, body in cases:
            response = _post(client, base + path, fuzz_world, content=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            try:
                _assert_not_500(response, (path, body))
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(repr(exc)[:400])
    assert not failures, "\n".join(failures)


def test_malformed_multipart_uploads_are_4xx_never_500(live_gateway, fuzz_world):
    url = f"{live_gateway.url}/{fuzz_world.ve.public_id}/v1/audio/transcriptions"
    bodies = [
        (b"garbage", "multipart/form-data"),
        (b"garbage", "multipart/form-data; boundary=xyz"),
        (b"--xyz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--xyz--\r\n", "multipart/form-data; boundary=xyz"),
        (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--xyz--\r\n",
         "multipart/form-data; boundary=xyz"),
        (b"--xyz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nchat\r\n--xyz", "multipart/form-data; boundary=xyz"),
        (b'{"model": "chat"}', "application/json"),
        (b"", "multipart/form-data; boundary="),
        (b"--\r\n", "multipart/form-data; boundary=\"\""),
    ]
    failures = []
    with httpx.Client(timeout=20) as client:
        for raw, ctype in bodies:
            response = _post(client, url, fuzz_world, content=raw, headers={"Content-Type": ctype})
            try:
                _assert_not_500(response, (raw, ctype))
            except (AssertionError, ValueError, KeyError) as exc:
                failures.append(repr(exc)[:400])
    assert not failures, "\n".join(failures)


def test_max_tokens_beyond_int32_is_a_400_naming_the_field(live_gateway, fuzz_world, openai_up):
    url = f"{live_gateway.url}/{fuzz_world.ve.public_id}/v1/chat/completions"
    with httpx.Client(timeout=20) as client:
        for field in ("max_tokens", "max_completion_tokens"):
            response = _post(client, url, fuzz_world, json={"model": "chat", "messages": MSG, field: 10**30})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == field
    assert not openai_up.requests  # refused before any upstream call


def test_largest_max_tokens_is_clamped_to_the_balance_not_a_500(live_gateway, fuzz_world, openai_up):
    # given: a hold for 2**31-1 tokens that the balance could never pay
    url = f"{live_gateway.url}/{fuzz_world.ve.public_id}/v1/chat/completions"
    body = {"model": "chat", "messages": MSG, "max_tokens": 2**31 - 1}
    # when
    with httpx.Client(timeout=20) as client:
        response = _post(client, url, fuzz_world, json=body)
    # then: served, with max_tokens clamped to what the balance pays for
    assert response.status_code == 200, response.text
    sent = openai_up.requests[-1].json
    assert 0 < sent["max_tokens"] < 2**31 - 1


def test_content_parts_of_the_wrong_shape_are_a_400_before_any_upstream(live_gateway, fuzz_world, openai_up):
    url = f"{live_gateway.url}/{fuzz_world.ve.public_id}/v1/chat/completions"
    bad = [[{"type": "text", "text": 5}], [{"type": 7}], ["text"], {"a": 1}, 5]
    with httpx.Client(timeout=20) as client:
        for content in bad:
            body = {"model": "chat", "messages": [{"role": "user", "content": content}]}
            response = _post(client, url, fuzz_world, json=body)
            assert response.status_code == 400, (content, response.text)
            assert response.json()["error"]["param"] == "messages[0].content"
    assert not openai_up.requests
