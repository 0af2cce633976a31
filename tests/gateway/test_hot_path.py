"""Hot-path guarantees: zero SQL in steady state, config changes within a second, no
secrets in answers or logs, weighted traffic, billing seam rendering, /tokenbill."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter

import httpx
import openai
import pytest
from django.conf import settings
from django.db.backends.utils import CursorWrapper
from django.db.models import F

from billing import gate
from routing.models import ConfigVersion, LogicalModel, Route
from tests import factories
from tests.fakes import openai_server as up
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def sql_log(monkeypatch):
    """Every SQL statement run by any thread except the routing cache's own worker."""
    seen: list[tuple[str, str]] = []
    original = CursorWrapper._execute_with_wrappers

    def spy(self, sql, params, many, executor):
        name = threading.current_thread().name
        if not name.startswith("tb-routing-cache"):
            seen.append((name, sql))
        return original(self, sql, params, many, executor)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", spy)
    return seen


def test_zero_sql_queries_on_the_hot_path_after_warm_up(live_gateway, world_openai, sql_log, biller):
    # given: a warm gateway (billing stubbed: its embedded-default reserve is a SQL update by
    # design; this measures the gateway's own path: auth, routing, relay)
    client = world_openai.client(f"{live_gateway.url}/{world_openai.ve.public_id}/v1")
    client.chat.completions.create(model="chat", messages=MSG)
    sql_log.clear()
    # when: calls of every kind
    for _ in range(5):
        client.chat.completions.create(model="chat", messages=MSG)
        list(client.chat.completions.create(model="chat", messages=MSG, stream=True))
    client.models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="unknown", messages=MSG)
    # then
    gateway_queries = [q for q in sql_log if q[0] != threading.current_thread().name]
    assert gateway_queries == []


def _poll_until_served(client, model: str, seconds: float = 3.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            client.chat.completions.create(model=model, messages=MSG)
            return time.monotonic() - started
        except (openai.NotFoundError, openai.PermissionDeniedError):
            time.sleep(0.05)
    raise AssertionError(f"{model} not served after {seconds}s")


def _announce_like_another_process() -> None:
    """What another process's config_changed() leaves behind, without this process's listener."""
    ConfigVersion.objects.filter(pk=1).update(version=F("version") + 1)
    if settings.REDIS_URL:
        import redis

        from routing.cache import redis_version_key

        client = redis.Redis.from_url(settings.REDIS_URL)
        client.incr(redis_version_key())
        client.close()


def test_config_change_from_another_process_is_picked_up_within_a_second(live_gateway, world_openai):
    # given: a warm gateway, then a new model written straight to SQL (no listener here)
    client = world_openai.client(f"{live_gateway.url}/v1")
    client.chat.completions.create(model="chat", messages=MSG)
    time.sleep(0.6)  # let the watcher take its baseline
    fresh = LogicalModel.objects.create(organization=world_openai.org, name="fresh")
    Route.objects.create(logical_model=fresh, physical_model=world_openai.physical[0])
    world_openai.ve.allowed_models.add(fresh)
    # when
    _announce_like_another_process()
    # then
    assert _poll_until_served(client, "fresh") < 1.5  # 1 s, plus scheduling slack on a busy 2-core box


def test_config_change_through_services_is_picked_up(live_gateway, world_openai):
    client = world_openai.client(f"{live_gateway.url}/v1")
    client.chat.completions.create(model="chat", messages=MSG)
    fresh = factories.make_logical_model(world_openai.org, "fresh2", routes=world_openai.physical)
    world_openai.ve.allowed_models.add(fresh)
    from routing.services import config_changed

    config_changed()
    assert _poll_until_served(client, "fresh2") < 1.5


def test_canary_secrets_never_reach_answers_or_logs(live_gateway, caplog, biller, settings):
    caplog.set_level(logging.DEBUG)
    canary = "sk-CANARY-9f8e7d6c5b4a"
    outputs: list[str] = []
    with up.OpenAIFake(api_key=canary) as leaky, up.OpenAIFake(api_key="other") as wrong:
        # routes: one that echoes the key in its error text, one that rejects our key, one that is down
        world = make_world([(leaky, "openai", "a", 0, 1)])
        dead = factories.make_provider(world.org, kind="openai", base_url="http://127.0.0.1:9/v1", api_key=canary)
        dead_pm = factories.make_physical_model(dead, "dead")
        Route.objects.create(logical_model=world.model, physical_model=dead_pm, priority=1)
        wrong_provider = factories.make_provider(world.org, kind="openai", base_url=wrong.base_url, api_key=canary)
        Route.objects.create(logical_model=world.model,
                             physical_model=factories.make_physical_model(wrong_provider, "w"), priority=2)
        from routing.cache import routing_cache

        routing_cache.refresh_now()
        scripts = [
            (up.fail(400, message=f"Invalid key {canary} for {leaky.base_url}"), False),
            (up.fail(400, message=f"Invalid key {canary} for {leaky.base_url}"), True),
            (up.fail(401, message=f"Incorrect API key provided: {canary}"), False),
            (up.fail(500, message=f"boom {canary}"), True),
            (up.stream(drop_after=2), True),
            (up.stream(drop_after=2, delay=0.05), True),
            (up.stall(5), False),
        ]
        settings.GATEWAY_TOTAL_TIMEOUT = 1.0
        for behaviour, stream in scripts:
            leaky.script(behaviour)
            if True:
                r = httpx.post(f"{live_gateway.url}/v1/chat/completions",
                               headers={"authorization": f"Bearer {world.secret}"},
                               json={"model": "chat", "messages": MSG, "stream": stream})
                outputs.append(r.text + json.dumps(dict(r.headers)))
        # and /tokenbill
        r = httpx.post(f"{live_gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {world.secret}"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "/tokenbill"}]})
        outputs.append(r.text)
        assert wrong.requests  # the route with a rejected key was tried
        leaky_host = leaky.url.split("//")[1]
    text = "\n".join(outputs) + caplog.text
    assert canary not in text
    assert leaky_host not in text and "127.0.0.1:9" not in text


def test_weights_share_traffic_and_weight_zero_gets_nothing(live_gateway):
    with up.OpenAIFake() as a, up.OpenAIFake() as b, up.OpenAIFake() as c:
        world = make_world([(a, "openai", "a", 0, "0.6"), (b, "openai", "b", 0, "0.2"), (c, "openai", "c", 0, 0)])
        client = world.client(f"{live_gateway.url}/v1")
        for _ in range(300):
            client.chat.completions.create(model="chat", messages=MSG)
        counts = Counter({"a": len(a.requests), "b": len(b.requests), "c": len(c.requests)})
    assert counts["c"] == 0
    assert 0.65 < counts["a"] / 300 < 0.85  # expected 0.75; 300 draws: > 4 sigma margin


class _Refusing(gate.NullBiller):
    def __init__(self, exc):
        self.exc = exc
        self.recorded = []

    async def admit(self, ctx):
        raise self.exc

    async def record(self, ctx, outcome):
        self.recorded.append(outcome)


@pytest.fixture
def refuse():
    previous = gate.get_biller()

    def install(exc):
        biller = _Refusing(exc)
        gate.set_biller(biller)
        return biller

    yield install
    gate.set_biller(previous)


def test_budget_exhausted_error_mode(live_gateway, world_openai, openai_up, refuse):
    biller = refuse(gate.BudgetExhausted("http://localhost:8000/checkout?ve_id=x&token=y"))
    with pytest.raises(openai.RateLimitError) as err:
        world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    body, headers = err.value.body, err.value.response.headers
    assert body["type"] == "insufficient_quota" and body["code"] == "budget_exhausted"
    assert body["checkout_url"] == "http://localhost:8000/checkout?ve_id=x&token=y"
    assert body["message"] == "Your Credit balance is insufficient. Please top up: http://localhost:8000/checkout?ve_id=x&token=y"
    assert headers["x-should-retry"] == "false"
    assert openai_up.requests == [] and biller.recorded[0].status == "budget_exhausted"


@pytest.mark.parametrize("stream", [False, True])
def test_budget_exhausted_message_mode(live_gateway, world_openai, openai_up, refuse, stream):
    refuse(gate.BudgetExhausted("http://localhost:8000/checkout?t=1", mode="message"))
    client = world_openai.client(f"{live_gateway.url}/v1")
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="chat", messages=MSG, stream=True) if c.choices)
    else:
        text = client.chat.completions.create(model="chat", messages=MSG).choices[0].message.content
    assert "http://localhost:8000/checkout?t=1" in text
    assert openai_up.requests == []


def test_rate_limited(live_gateway, world_openai, refuse):
    refuse(gate.RateLimited(3.2))
    with pytest.raises(openai.RateLimitError) as err:
        world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert err.value.response.headers["retry-after"] == "4"
    assert err.value.body["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_tokenbill_magic_answers_without_upstream(live_gateway, world_openai, openai_up, stream):
    client = world_openai.client(f"{live_gateway.url}/v1")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": "/tokenbill"}]
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="chat", messages=messages, stream=True) if c.choices)
    else:
        text = client.chat.completions.create(model="chat", messages=messages).choices[0].message.content
    assert world_openai.ve.name in text
    assert openai_up.requests == []


def test_refused_model_is_recorded_for_the_request_log(live_gateway, world_openai, biller):
    with pytest.raises(openai.NotFoundError):
        world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(model="nope", messages=MSG)
    (ctx, outcome), = biller.recorded
    assert ctx.requested_model == "nope" and ctx.model is None
    assert outcome.http_status == 404 and outcome.error_code == "model_not_found"
    assert biller.admitted == []


def test_key_last_used_is_written_in_batches_off_the_hot_path(live_gateway, world_openai, monkeypatch):
    from routing import cache
    from routing.models import AccessKey

    monkeypatch.setattr(cache, "LAST_USED_FLUSH_SECONDS", 0.2)
    client = world_openai.client(f"{live_gateway.url}/v1")
    for _ in range(3):
        client.chat.completions.create(model="chat", messages=MSG)
    deadline = time.monotonic() + 3
    while AccessKey.objects.get(pk=world_openai.key.pk).last_used_at is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert AccessKey.objects.get(pk=world_openai.key.pk).last_used_at is not None


def test_gc_tuning_freezes_what_startup_loaded_when_on(settings):
    import gc

    from gateway.app import _tune_gc

    before = gc.get_threshold()
    try:
        settings.GATEWAY_GC_TUNING = False
        _tune_gc()
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
        settings.GATEWAY_GC_TUNING = True
        _tune_gc()
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == (20_000, 50, 100)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
