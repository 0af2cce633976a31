"""Read-your-writes at tenant scale (issue 16), through the real gateway over sockets: a key
or VE created through the management API answers on the very next call, a revoked key is
refused on the next one, a lost change message is healed by the periodic check, unknown
keys do not reach SQL per call, and the key cache stays within its size."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
from django.db.models import F

from routing import services
from routing.cache import routing_cache
from routing.models import AccessKey, ConfigVersion
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "hello"}]


def _chat(base: str, secret: str, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{base}{path}", json={"model": "chat", "messages": MSG},
                      headers={"Authorization": f"Bearer {secret}"}, timeout=20)


@pytest.fixture
def api(live_gateway, world_openai):
    _, token = services.management_token_create(organization=world_openai.org)
    client = httpx.Client(base_url=f"{live_gateway.url}/api/v1", headers={"Authorization": f"Bearer {token}"},
                          timeout=20)
    yield client
    client.close()


def test_a_key_created_through_the_api_works_on_the_very_next_call(live_gateway, world_openai, api, biller):
    # given: a warm gateway (its snapshot loaded before the key exists)
    assert _chat(live_gateway.url, world_openai.secret).status_code == 200
    rebuilds = routing_cache.rebuilds
    # when: five keys, each called right after the API answered
    for i in range(5):
        created = api.post(f"/virtual-endpoints/{world_openai.ve.public_id}/keys", json={"name": f"k{i}"})
        assert created.status_code == 201
        answer = _chat(live_gateway.url, created.json()["key"])
        # then
        assert answer.status_code == 200, answer.text
    assert routing_cache.rebuilds == rebuilds  # patched, not rebuilt


def test_a_ve_and_its_key_created_through_the_api_work_on_the_next_call(live_gateway, world_openai, api, biller):
    # given
    assert _chat(live_gateway.url, world_openai.secret).status_code == 200
    # when: a new VE (named in the URL) and a key of it
    ve = api.post("/virtual-endpoints", json={"name": "fresh", "allowed_models": ["chat"]})
    assert ve.status_code == 201, ve.text
    public_id = ve.json()["id"]
    key = api.post(f"/virtual-endpoints/{public_id}/keys", json={"name": "k"}).json()["key"]
    answer = _chat(live_gateway.url, key, f"/{public_id}/v1/chat/completions")
    # then
    assert answer.status_code == 200, answer.text


def test_a_revoked_key_is_refused_on_the_next_call(live_gateway, world_openai, api, biller):
    # given: a key in use (held in the process's cache)
    created = api.post(f"/virtual-endpoints/{world_openai.ve.public_id}/keys", json={"name": "k"}).json()
    assert _chat(live_gateway.url, created["key"]).status_code == 200
    # when
    revoked = api.post(f"/virtual-endpoints/{world_openai.ve.public_id}/keys/{created['id']}/revoke")
    assert revoked.status_code == 200
    # then
    assert _chat(live_gateway.url, created["key"]).status_code == 401
    assert _chat(live_gateway.url, world_openai.secret).status_code == 200  # the others still work


def test_a_lost_change_message_is_healed_by_the_periodic_check(live_gateway, world_openai, biller):
    # given: the key in use
    assert _chat(live_gateway.url, world_openai.secret).status_code == 200
    # when: disabled in SQL with the version moved but no message to anyone (a lost publish)
    AccessKey.objects.filter(pk=world_openai.key.pk).update(enabled=False)
    ConfigVersion.objects.filter(pk=1).update(version=F("version") + 1)
    # then: the periodic check sees a version nobody announced and rebuilds (with Redis the
    # SQL row is read every 10 s)
    deadline = time.monotonic() + 40
    status = 200
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        status = _chat(live_gateway.url, world_openai.secret).status_code
    assert status == 401


def test_unknown_keys_are_remembered_and_do_not_reach_sql_per_call(live_gateway, world_openai, biller, settings):
    # given: answers remembered longer than this test takes (the machine is slow and shared)
    settings.GATEWAY_NEGATIVE_CACHE_SECONDS = 600
    assert _chat(live_gateway.url, world_openai.secret).status_code == 200
    unknown = [f"tb-{secrets.token_urlsafe(24)}" for _ in range(5)]
    before = routing_cache.miss_queries
    # when: each unknown key ten times
    codes = {_chat(live_gateway.url, secret).status_code for _ in range(10) for secret in unknown}
    # then: refused, and at most one lookup per distinct key
    assert codes == {401}
    assert routing_cache.miss_queries - before <= len(unknown)


def test_the_negative_cache_is_bounded(live_gateway, world_openai, biller, settings):
    # given
    settings.GATEWAY_NEGATIVE_CACHE_SIZE = 10
    # when: a flood of distinct unknown keys
    for _ in range(40):
        assert _chat(live_gateway.url, f"tb-{secrets.token_urlsafe(24)}").status_code == 401
    # then
    assert len(routing_cache._negative) <= 10


def test_the_key_cache_stays_within_its_size_and_cold_keys_still_work(live_gateway, world_openai, biller, settings):
    # given: room for three keys, eight keys
    settings.GATEWAY_KEY_CACHE_SIZE = 3
    secrets_ = [factories.make_key(world_openai.ve, name=f"k{i}")[1] for i in range(8)]
    # when: every key called, twice round
    codes = [_chat(live_gateway.url, s).status_code for _ in range(2) for s in secrets_]
    # then
    assert codes == [200] * 16
    assert len(routing_cache.snapshot.keys_by_hash) <= 3


def test_a_model_created_through_the_api_is_served_on_the_next_call(live_gateway, world_openai, api, biller):
    # given
    assert _chat(live_gateway.url, world_openai.secret).status_code == 200
    rebuilds = routing_cache.rebuilds
    physical = world_openai.physical[0]
    # when: a second logical model on the same physical model, then the VE allowed it
    made = api.post("/logical-models", json={"name": "chat2", "routes": [{"physical_model_id": physical.pk}]})
    assert made.status_code == 201, made.text
    patched = api.patch(f"/virtual-endpoints/{world_openai.ve.public_id}", json={"allowed_models": ["chat", "chat2"]})
    assert patched.status_code == 200, patched.text
    answer = httpx.post(f"{live_gateway.url}/v1/chat/completions", json={"model": "chat2", "messages": MSG},
                        headers={"Authorization": f"Bearer {world_openai.secret}"}, timeout=20)
    # then: served, and only that organization was reloaded
    assert answer.status_code == 200, answer.text
    assert routing_cache.rebuilds == rebuilds


# --- several processes against one PostgreSQL and Redis (the Redis pass) ----------------------
@pytest.fixture
def other_process(live_gateway, world_openai):
    """A second gateway process (its own interpreter and cache), warm before the test acts."""
    import os
    import subprocess
    import sys

    from django.conf import settings
    from django.db import connection

    if not settings.REDIS_URL or connection.vendor != "postgresql":
        pytest.skip("several gateway processes share state through PostgreSQL and Redis: the Redis pass runs this")
    db = connection.settings_dict
    # UPSTREAM_ALLOW_PRIVATE: the fake upstream is on 127.0.0.1 (with DATABASE_URL set, a
    # process outside pytest refuses private upstreams by default).
    env = dict(os.environ, REDIS_PREFIX=settings.REDIS_PREFIX, GATEWAY_GC_TUNING="0", UPSTREAM_ALLOW_PRIVATE="1",
               DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}")
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.gateway_process"], env=env, stdout=subprocess.PIPE,
                            cwd=str(settings.BASE_DIR))
    try:
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # up and holding a snapshot with the world in it
            try:
                if _chat(base, world_openai.secret).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the second gateway process did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_key_created_here_works_at_once_in_another_process_and_its_revocation_too(
        other_process, world_openai, api):
    # given: a warm second process; keys created through this process's API
    for i in range(3):
        created = api.post(f"/virtual-endpoints/{world_openai.ve.public_id}/keys", json={"name": f"k{i}"}).json()
        # when / then: its first call, in the other process, right after the API answered
        answer = _chat(other_process, created["key"])
        assert answer.status_code == 200, answer.text
        # and the revocation: refused there on the next call
        assert api.post(f"/virtual-endpoints/{world_openai.ve.public_id}/keys/{created['id']}/revoke").status_code == 200
        assert _chat(other_process, created["key"]).status_code == 401


def test_a_ve_suspended_here_is_refused_at_once_in_another_process(other_process, world_openai, api):
    # when
    patched = api.patch(f"/virtual-endpoints/{world_openai.ve.public_id}", json={"status": "suspended"})
    assert patched.status_code == 200, patched.text
    # then
    assert _chat(other_process, world_openai.secret).status_code == 403
