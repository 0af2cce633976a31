"""Split timeouts through the running gateway (official openai SDK): connect, first byte
(minutes by default: reasoning models think before they answer), silence between chunks;
a timeout once the request was sent is not sent again elsewhere unless opted in.

Time is compressed by configuration: a provider's timeouts are set in tenths of seconds
and the fake's delays scaled alike (a 150 s answer against the old 120 s read timeout
becomes 1.5 s against 1.2 s)."""

from __future__ import annotations

import asyncio
import json
import socket

import openai
import pytest
from aiohttp import web

from billing import gate
from billing.models import RequestLog
from gateway import fake_upstream
from gateway.httpclient import ConnectTimeout, Pool
from routing.breaker import breaker
from routing.cache import routing_cache
from routing.models import LogicalModel, Provider, VirtualEndpoint
from routing.services import config_changed
from tests.fakes import openai_server as up
from tests.fakes.server import FAKE, RECORDED
from tests.gateway.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)
MSG = [{"role": "user", "content": "think hard"}]


def timeouts(world, index: int = 0, **fields) -> None:
    Provider.objects.filter(pk=world.physical[index].provider_id).update(**fields)
    config_changed()
    routing_cache.refresh_now()


def flush():
    flush_sync = getattr(gate.get_biller(), "flush_sync", None)
    if flush_sync:
        flush_sync()


def answer_after(seconds: float):
    """A non-streamed answer whose headers and body come only at the end (as OpenAI sends a
    reasoning model's answer)."""

    async def behave(request):
        await request[FAKE].wait_stopping(seconds)
        return web.json_response(fake_upstream.completion(request[RECORDED].json, "Thought it through."))

    return behave


def stream_after(seconds: float):
    """Headers at once, then nothing for `seconds` (thinking), then the whole stream."""

    async def behave(request):
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await request[FAKE].wait_stopping(seconds)
        for frame in fake_upstream.stream_events(request[RECORDED].json, "Thought it through."):
            await resp.write(frame)
        await resp.write_eof()
        return resp

    return behave


@pytest.fixture
def second():
    with up.OpenAIFake(api_key="sk-second") as fake:
        yield fake


@pytest.fixture
def two_tier(live_gateway, openai_up, second):
    world = make_world([(openai_up, "openai", "primary", 0, 1), (second, "openai", "backup", 1, 1)])
    timeouts(world, 0, first_byte_timeout=0.5, read_timeout=0.5)
    return world


def test_defaults_give_a_reasoning_model_minutes_to_its_first_byte(live_gateway, world_openai):
    provider = Provider.objects.get(pk=world_openai.physical[0].provider_id)
    assert (provider.connect_timeout, provider.first_byte_timeout, provider.read_timeout) == (10.0, 600.0, 120.0)


def test_a_non_streamed_answer_longer_than_the_read_timeout_succeeds(live_gateway, world_openai, openai_up):
    # given: silence allowed between chunks 1.2 (the old 120 s read timeout), first byte 6 (600 s)
    timeouts(world_openai, first_byte_timeout=6.0, read_timeout=1.2)
    openai_up.script(answer_after(1.5))  # a 150 s answer
    # when
    resp = world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    # then: served, once
    assert resp.choices[0].message.content == "Thought it through."
    assert len(openai_up.requests) == 1


def test_a_stream_that_thinks_before_its_first_chunk_succeeds(live_gateway, world_openai, openai_up):
    timeouts(world_openai, first_byte_timeout=6.0, read_timeout=1.2)
    openai_up.script(stream_after(1.5))
    chunks = list(world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(
        model="chat", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Thought it through."


def test_silence_between_chunks_is_timed_by_the_read_timeout(live_gateway, world_openai, openai_up, biller):
    # given: a first-byte timeout far longer than the test; the stream goes silent after 2 events
    timeouts(world_openai, first_byte_timeout=120.0, read_timeout=0.5)
    openai_up.script(up.stream(stall_after=2))
    # when: the silence is cut by the 0.5 s read timeout (not the 120 s first-byte one):
    # the client (timeout 20 s) sees the stream's error event
    with pytest.raises(openai.APIError):
        for _ in world_openai.client(f"{live_gateway.url}/v1").chat.completions.create(
                model="chat", messages=MSG, stream=True):
            pass
    (_, outcome), = biller.wait_settled()
    assert outcome.error_code == "stream_interrupted"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_timeout_after_the_request_was_sent_is_504_not_retried_and_charged_nothing(
        live_gateway, two_tier, openai_up, second, settings, stream):
    # given: the breaker would open at the first plain failure
    settings.GATEWAY_BREAKER_THRESHOLD = 1
    openai_up.script(up.stall(10))
    client = two_tier.client(f"{live_gateway.url}/v1")
    # when
    with pytest.raises(openai.APIStatusError) as err:
        if stream:
            list(client.chat.completions.create(model="chat", messages=MSG, stream=True))
        else:
            client.chat.completions.create(model="chat", messages=MSG)
    # then: 504, the backup never called (the primary may still answer, and bill, it)
    assert err.value.status_code == 504 and err.value.code == "upstream_timeout"
    assert second.requests == []
    flush()
    row = RequestLog.objects.get(virtual_endpoint_id=two_tier.ve.pk)
    assert row.charge == 0 and row.http_status == 504
    assert [(a["upstream_model"], a["error"], a.get("note")) for a in row.attempts] == [
        ("primary", "timeout", "may be billed upstream")]
    ve = VirtualEndpoint.objects.get(pk=two_tier.ve.pk)
    assert ve.credit_spend == 0 and ve.credit_reserved == 0
    # and a slow answer is not a broken route: the breaker stays closed
    assert not breaker.is_open(two_tier.physical[0].pk)


def test_a_logical_model_may_opt_in_to_fall_back_on_timeouts(live_gateway, two_tier, openai_up, second, biller):
    LogicalModel.objects.filter(pk=two_tier.model.pk).update(fallback_on_timeout=True)
    config_changed()
    routing_cache.refresh_now()
    openai_up.script(up.stall(10))
    resp = two_tier.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert resp.choices[0].message.content == "Echo: think hard"
    assert [r.json["model"] for r in second.requests] == ["backup"]
    (_, outcome), = biller.wait_settled()
    assert [(a["upstream_model"], a.get("note")) for a in outcome.attempts] == [
        ("primary", "may be billed upstream"), ("backup", None)]


@pytest.fixture
def unanswered_port():
    """A listening socket whose accept queue is full: new connections get no SYN-ACK, so
    connecting times out (the request is never sent)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue (its length is backlog + 1 on Linux)
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    server.close()


async def test_the_client_raises_connect_timeout_when_no_connection_comes(unanswered_port):
    pool = Pool(asyncio.get_running_loop())
    try:
        with pytest.raises(ConnectTimeout):
            await pool.request("POST", f"http://127.0.0.1:{unanswered_port}/v1/chat/completions", {}, b"{}",
                               connect_timeout=0.3, read_timeout=5, total=5)
    finally:
        pool.close()


def test_a_connect_timeout_falls_back_as_before(live_gateway, unanswered_port, second, biller):
    class Unanswered:
        base_url = f"http://127.0.0.1:{unanswered_port}/v1"
        api_key = "sk-nobody"

    world = make_world([(Unanswered, "openai", "primary", 0, 1), (second, "openai", "backup", 1, 1)])
    timeouts(world, 0, connect_timeout=0.3)
    resp = world.client(f"{live_gateway.url}/v1").chat.completions.create(model="chat", messages=MSG)
    assert resp.choices[0].message.content == "Echo: think hard"
    (_, outcome), = biller.wait_settled()
    assert [(a["upstream_model"], a["error"]) for a in outcome.attempts] == [("primary", "connect_timeout"),
                                                                            ("backup", "")]
    assert json.dumps(outcome.attempts).count("may be billed") == 0
