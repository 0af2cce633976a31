"""URL forms, auth header variants, the error table, /v1/models, embeddings."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from routing.cache import routing_cache
from tests import factories
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)


def test_chat_through_path_url(live_gateway, world_openai, openai_up):
    # given
    client = world_openai.client(f"{live_gateway.url}/{world_openai.ve.public_id}/v1")
    # when
    answer = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}])
    # then
    completion = answer.parse()
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.model == "chat"
    assert completion.usage.completion_tokens == 3
    assert answer.headers["x-tokenbill-request-id"].startswith("req_")
    sent = openai_up.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.json["model"] == "gpt-up"
    assert sent.headers["authorization"] == "Bearer sk-openai-test"


def test_chat_through_key_only_url(live_gateway, world_openai):
    client = world_openai.client(f"{live_gateway.url}/v1")
    completion = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Echo: hi"


def test_chat_through_host_header(live_gateway, world_openai, settings):
    # given: the VE named by the host <ve>.ve.<GATEWAY_BASE_DOMAIN>, any path
    host = f"{world_openai.ve.public_id}.ve.{settings.GATEWAY_BASE_DOMAIN}"
    client = world_openai.client(f"{live_gateway.url}/v1", default_headers={"Host": host})
    # when
    completion = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "via host"}])
    # then
    assert completion.choices[0].message.content == "Echo: via host"


def test_key_of_another_ve_is_401_on_host_and_path(live_gateway, world_openai, openai_up, settings):
    other = make_world([(openai_up, "openai", "gpt-up", 0, 1)])
    with pytest.raises(openai.AuthenticationError):
        other.client(f"{live_gateway.url}/{world_openai.ve.public_id}/v1").chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}])
    host = f"{world_openai.ve.public_id}.ve.{settings.GATEWAY_BASE_DOMAIN}"
    with pytest.raises(openai.AuthenticationError):
        other.client(f"{live_gateway.url}/v1", default_headers={"Host": host}).models.list()


@pytest.mark.parametrize("header", ["authorization", "api-key", "x-api-key"])
def test_auth_header_variants(live_gateway, world_openai, header):
    value = f"Bearer {world_openai.secret}" if header == "authorization" else world_openai.secret
    r = httpx.post(f"{live_gateway.url}/v1/chat/completions", headers={header: value},
                   json={"model": "chat", "messages": [{"role": "user", "content": "hdr"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hdr"


def _post(gw, path="/v1/chat/completions", *, secret=None, body=None, content=None, headers=None):
    headers = dict(headers or {})
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    if content is None:
        content = json.dumps(body if body is not None else {"model": "chat", "messages": [{"role": "user", "content": "x"}]})
    return httpx.post(gw.url + path, content=content, headers=headers)


def _assert_error(r, status, code=None):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    if code:
        assert error["code"] == code
    assert r.headers["x-tokenbill-request-id"].startswith("req_")


def test_error_table(live_gateway, world_openai, settings):
    gw, secret = live_gateway, world_openai.secret
    ve_id = world_openai.ve.public_id
    _assert_error(_post(gw), 401, "invalid_api_key")
    _assert_error(_post(gw, secret="tb-unknown"), 401, "invalid_api_key")
    _assert_error(_post(gw, secret=secret, content="{not json"), 400, "invalid_json")
    _assert_error(_post(gw, secret=secret, body={"model": "chat"}), 400)
    _assert_error(_post(gw, secret=secret, body={"messages": [{"role": "user", "content": "x"}]}), 400)
    _assert_error(_post(gw, secret=secret, body={"model": "chat", "messages": [{"role": "user"}], "stream": "yes"}), 400)
    _assert_error(_post(gw, secret=secret, body={"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
                  404, "model_not_found")
    _assert_error(_post(gw, "/ve_0000000000000000/v1/chat/completions", secret=secret), 404, "unknown_endpoint")
    _assert_error(_post(gw, "/v1/nothing-here", secret=secret), 404, "unknown_path")
    _assert_error(_post(gw, f"/{ve_id}/v1/chat/completions", secret=secret,
                        content=b"x" * (settings.GATEWAY_MAX_BODY_BYTES + 1)), 413)


def test_model_of_the_org_not_allowed_for_ve_is_403_and_for_key(live_gateway, world_openai):
    # given: a second model in the org that the VE does not list, and a key limited to it
    other = factories.make_logical_model(world_openai.org, "other", routes=world_openai.physical)
    _, limited = factories.make_key(world_openai.ve, allowed_models=[other])
    routing_cache.refresh_now()
    # then
    _assert_error(_post(live_gateway, secret=world_openai.secret,
                        body={"model": "other", "messages": [{"role": "user", "content": "x"}]}), 403)
    _assert_error(_post(live_gateway, secret=limited), 403)


def test_disabled_expired_and_suspended(live_gateway, world_openai):
    from datetime import timedelta

    from django.utils import timezone

    from routing.models import AccessKey, VirtualEndpoint

    _, disabled = factories.make_key(world_openai.ve, enabled=False)
    _, expired = factories.make_key(world_openai.ve, expires_at=timezone.now() - timedelta(minutes=1))
    routing_cache.refresh_now()
    _assert_error(_post(live_gateway, secret=disabled), 401)
    _assert_error(_post(live_gateway, secret=expired), 401)
    VirtualEndpoint.objects.filter(pk=world_openai.ve.pk).update(status="suspended")
    routing_cache.refresh_now()
    _assert_error(_post(live_gateway, secret=world_openai.secret), 403, "endpoint_suspended")
    assert AccessKey.objects.count() == 3


def test_models_list_is_ve_models_within_key_allow_list(live_gateway, world_openai):
    # given: the VE allows chat and extra; a key limited to extra
    extra = factories.make_logical_model(world_openai.org, "extra", routes=world_openai.physical)
    world_openai.ve.allowed_models.add(extra)
    factories.make_logical_model(world_openai.org, "hidden", routes=world_openai.physical)
    _, limited = factories.make_key(world_openai.ve, allowed_models=[extra])
    routing_cache.refresh_now()
    base = f"{live_gateway.url}/{world_openai.ve.public_id}/v1"
    # when
    all_ids = [m.id for m in world_openai.client(base).models.list()]
    limited_ids = [m.id for m in openai.OpenAI(base_url=base, api_key=limited, max_retries=0).models.list()]
    # then
    assert all_ids == ["chat", "extra"]
    assert limited_ids == ["extra"]


def test_embeddings(live_gateway, openai_up):
    world = make_world([(openai_up, "openai", "embed-up", 0, 1)], model_name="embed", modality="embedding")
    result = world.client(f"{live_gateway.url}/v1").embeddings.create(model="embed", input=["a", "bb"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 2
    assert openai_up.requests[0].path == "/v1/embeddings"
    assert openai_up.requests[0].json["model"] == "embed-up"


def test_unknown_params_pass_through(live_gateway, world_openai, openai_up):
    world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "x"}], temperature=0.3,
        extra_body={"top_k": 7, "vendor_thing": {"a": 1}})
    sent = openai_up.requests[0].json
    assert sent["top_k"] == 7 and sent["vendor_thing"] == {"a": 1} and sent["temperature"] == 0.3


def test_non_gateway_paths_still_reach_django(live_gateway):
    from gateway.app import GatewayApp

    app = GatewayApp()
    assert not app.claims({"path": "/console/", "headers": [(b"host", b"localhost")]})
    assert not app.claims({"path": "/ve_abc/console", "headers": []})
    assert app.claims({"path": "/anything", "headers": [(b"host", b"ve_abc.ve.localhost:8000")]})
    r = httpx.get(live_gateway.url + "/admin/login/")
    assert "x-tokenbill-request-id" not in r.headers  # served by Django, not the gateway


def test_endpoint_and_model_modality_must_match(live_gateway, openai_up):
    world = make_world([(openai_up, "openai", "embed-up", 0, 1)], model_name="embed", modality="embedding")
    _assert_error(_post(live_gateway, secret=world.secret,
                        body={"model": "embed", "messages": [{"role": "user", "content": "x"}]}), 400,
                  "model_not_supported")
    assert openai_up.requests == []
