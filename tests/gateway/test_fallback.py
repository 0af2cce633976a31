"""The fallback matrix, attempt cap, total timeout, all-failed statuses, breaker."""

from __future__ import annotations

import time

import openai
import pytest

from routing.breaker import breaker
from tests.fakes import openai_server as up
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "fall over"}]


@pytest.fixture
def second():
    with up.OpenAIFake(api_key="sk-second") as fake:
        yield fake


@pytest.fixture
def two_tier(live_gateway, openai_up, second):
    """Primary in tier 0, backup in tier 1."""
    return make_world([(openai_up, "openai", "primary", 0, 1), (second, "openai", "backup", 1, 1)])


TRANSIENT = [up.fail(s) for s in (408, 409, 429, 500, 502, 503, 504, 529)] + [
    up.fail(401), up.malformed(), up.drop(), up.raw_reply(b'{"no": "choices"}')]
TRANSIENT_IDS = ["408", "409", "429", "500", "502", "503", "504", "529", "401-route-fault", "malformed-json",
                 "dropped", "no-choices"]


@pytest.mark.parametrize("behaviour", TRANSIENT, ids=TRANSIENT_IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_transient_failures_fall_back_to_next_tier(live_gateway, two_tier, openai_up, second, biller, behaviour, stream):
    # given
    openai_up.script(behaviour)
    client = two_tier.client(f"{live_gateway.url}/v1")
    # when
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="chat", messages=MSG, stream=True) if c.choices)
    else:
        text = client.chat.completions.create(model="chat", messages=MSG).choices[0].message.content
    # then
    assert text == "Echo: fall over"
    assert [r.json["model"] for r in second.requests] == ["backup"]
    (_, outcome), = biller.wait_settled()
    assert [a["upstream_model"] for a in outcome.attempts] == ["primary", "backup"]
    assert outcome.attempts[0]["status"] != 200 and outcome.attempts[1]["status"] == 200
    assert outcome.route.physical_model.upstream_model == "backup"
    assert set(outcome.attempts[0]) == {"physical_model_id", "upstream_model", "provider_id", "provider", "status",
                                        "error", "latency_ms"}


@pytest.mark.parametrize("status,exc", [(400, openai.BadRequestError), (413, openai.APIStatusError),
                                        (422, openai.UnprocessableEntityError)])
def test_client_errors_do_not_fall_back(live_gateway, two_tier, openai_up, second, status, exc):
    openai_up.script(up.fail(status, message="bad temperature", code="invalid_value"))
    with pytest.raises(exc) as err:
        two_tier.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert err.value.status_code == status
    assert err.value.body["code"] == "invalid_value" and "bad temperature" in err.value.body["message"]
    assert second.requests == []


def test_context_length_error_is_returned_as_is(live_gateway, two_tier, openai_up, second):
    openai_up.script(up.fail(400, message="maximum context length is 8192 tokens", code="context_length_exceeded"))
    with pytest.raises(openai.BadRequestError) as err:
        two_tier.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG, stream=True)
    assert err.value.body["code"] == "context_length_exceeded"
    assert second.requests == []


def test_same_tier_is_tried_before_lower_tier(live_gateway, openai_up, second):
    with up.OpenAIFake(api_key="sk-third") as third:
        world = make_world([(openai_up, "openai", "a", 0, 1), (second, "openai", "b", 0, 1), (third, "openai", "c", 1, 1)])
        openai_up.script(up.fail(500))
        second.script(up.fail(500))
        answer = world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
        assert answer.choices[0].message.content == "Echo: fall over"
        assert len(openai_up.requests) == len(second.requests) == len(third.requests) == 1


def test_attempt_cap(live_gateway, settings, biller):
    settings.GATEWAY_MAX_ATTEMPTS = 2
    fakes = [up.OpenAIFake(api_key=f"k{i}").start() for i in range(4)]
    try:
        world = make_world([(f, "openai", f"m{i}", i, 1) for i, f in enumerate(fakes)])
        for f in fakes:
            f.script(up.fail(502))
        with pytest.raises(openai.APIStatusError) as err:
            world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
        assert err.value.status_code == 502
        assert sum(len(f.requests) for f in fakes) == 2
        (_, outcome), = biller.wait_settled()
        assert len(outcome.attempts) == 2 and outcome.route is None
    finally:
        for f in fakes:
            f.stop()


def test_all_failed_statuses(live_gateway, two_tier, openai_up, second, settings):
    client = two_tier.client(f"{live_gateway.url}/v1")
    # bad answers everywhere: 502
    openai_up.script(up.malformed())
    second.script(up.fail(500))
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="chat", messages=MSG)
    assert err.value.status_code == 502
    # capacity everywhere: 503 with Retry-After
    openai_up.script(up.fail(503))
    second.script(up.fail(429, retry_after="7"))
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="chat", messages=MSG)
    assert err.value.status_code == 503 and int(err.value.response.headers["retry-after"]) >= 1


def test_total_timeout_gives_504(live_gateway, openai_up, settings):
    settings.GATEWAY_TOTAL_TIMEOUT = 0.5
    world = make_world([(openai_up, "openai", "slow", 0, 1)])
    openai_up.script(up.stall(5))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert err.value.status_code == 504
    assert time.monotonic() - started < 3


def test_breaker_opens_after_threshold_and_is_skipped(live_gateway, two_tier, openai_up, second, settings):
    settings.GATEWAY_BREAKER_THRESHOLD = 2
    settings.GATEWAY_BREAKER_COOLDOWN = 30
    client = two_tier.client(f"{live_gateway.url}/v1")
    openai_up.script(up.fail(500), up.fail(500))
    for _ in range(2):
        client.chat.completions.create(model="chat", messages=MSG)
    primary = two_tier.physical[0].pk
    assert breaker.is_open(primary)
    # while open, the primary is not even tried
    for _ in range(3):
        client.chat.completions.create(model="chat", messages=MSG)
    assert len(openai_up.requests) == 2 and len(second.requests) == 5


def test_429_with_retry_after_opens_at_once_and_extension_never_shortens(live_gateway, two_tier, openai_up, settings):
    settings.GATEWAY_BREAKER_THRESHOLD = 100
    client = two_tier.client(f"{live_gateway.url}/v1")
    primary = two_tier.physical[0].pk
    openai_up.script(up.fail(429, retry_after="60"))
    client.chat.completions.create(model="chat", messages=MSG)
    first_until = breaker.open_until(primary)
    assert first_until - time.time() > 50
    # a shorter cooldown reported later does not shorten it
    breaker.merge(primary, time.time() + 5)
    assert breaker.open_until(primary) == first_until
    # a longer one extends it
    breaker.merge(primary, time.time() + 120)
    assert breaker.open_until(primary) > first_until


def test_everything_cooling_down_is_503_with_retry_after(live_gateway, two_tier, openai_up, second):
    for pm in two_tier.physical:
        breaker.merge(pm.pk, time.time() + 42)
    with pytest.raises(openai.APIStatusError) as err:
        two_tier.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert err.value.status_code == 503
    assert 40 <= int(err.value.response.headers["retry-after"]) <= 43
    assert openai_up.requests == [] and second.requests == []


def test_cooldown_ends_and_model_serves_again(live_gateway, two_tier, openai_up, second):
    primary = two_tier.physical[0].pk
    breaker.merge(primary, time.time() + 0.3)
    client = two_tier.client(f"{live_gateway.url}/v1")
    client.chat.completions.create(model="chat", messages=MSG)
    assert len(second.requests) == 1
    time.sleep(0.35)
    client.chat.completions.create(model="chat", messages=MSG)
    assert len(openai_up.requests) == 1
