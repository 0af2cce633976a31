"""POST /v1/audio/speech through the live gateway with the openai SDK: the audio streams
through as it arrives, billed by the seconds measured from the audio bytes per format."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import openai
import pytest
from aiohttp import web

from billing.pricing_media import speech_cap_seconds
from tests.fakes import audio_samples
from tests.fakes.media_server import MediaFake
from tests.fakes.openai_server import fail
from tests.fakes.server import FAKE, raw_reply
from tests.gateway.media_world import AUDIO_COST, RATE, charged, log_row, media_world, micros

pytestmark = pytest.mark.django_db(transaction=True)
PER_SECOND = AUDIO_COST * RATE  # credits per second (markup 1)


@pytest.fixture
def up():
    with MediaFake(api_key="sk-tts") as fake:
        yield fake


@pytest.mark.parametrize("fmt", ["mp3", "wav", "opus", "aac", "flac", "pcm"])
def test_speech_billed_by_measured_seconds_per_format(live_gateway, up, fmt):
    # given an upstream that speaks 4.8 seconds of audio in the asked format
    world = media_world([(up, "openai")], "speech")
    up.speech_seconds = 4.8
    # when
    raw = world.sdk(live_gateway).audio.speech.with_raw_response.create(
        model="media", voice="alloy", input="Hello there, this is a test of the speech endpoint.",
        response_format=fmt)
    audio = raw.content
    # then the client got the upstream's bytes unchanged, and the duration is within 1%
    assert audio == audio_samples.BUILDERS[fmt](4.8)
    row = log_row(raw.headers["x-tokenbill-request-id"])
    assert abs(row.audio_seconds - Decimal("4.8")) <= Decimal("0.048")
    assert not row.usage_estimated and row.status == "ok"
    assert row.charge == micros(row.audio_seconds * PER_SECOND) == charged(world.ve)
    assert up.requests[-1].json["model"] == "up-speech-0"


def test_speech_reservation_is_capped_by_the_input_length(live_gateway, up):
    world = media_world([(up, "openai")], "speech")
    text = "x" * 200
    raw = world.sdk(live_gateway).audio.speech.with_raw_response.create(model="media", voice="alloy", input=text,
                                                                        speed=2.0)
    raw.content
    row = log_row(raw.headers["x-tokenbill-request-id"])
    # 200 chars at 5 chars/s at speed 2 -> 20 s, + 1 s padding
    assert speech_cap_seconds(text, 2.0) == Decimal(21)
    assert row.price_snapshot["reserved"] == micros(Decimal(21) * PER_SECOND)
    assert row.charge == micros(Decimal("3.000") * PER_SECOND)


def test_speech_streams_before_the_upstream_finishes(live_gateway, up):
    # given an upstream that sends half the audio, then pauses a second
    world = media_world([(up, "openai")], "speech")
    audio = audio_samples.mp3(2.4)

    async def slow(request):
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        await resp.write(audio[: len(audio) // 2])
        await asyncio.sleep(1.0)
        await resp.write(audio[len(audio) // 2:])
        await resp.write_eof()
        return resp

    up.script(slow)
    # when the client reads the stream
    started = time.monotonic()
    with world.sdk(live_gateway).audio.speech.with_streaming_response.create(
            model="media", voice="alloy", input="stream me") as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    # then the first bytes arrived well before the upstream's pause ended
    assert first_at < 0.8 and first + rest == audio
    row = log_row(response.headers["x-tokenbill-request-id"])
    assert row.audio_seconds == Decimal("2.400")


def test_unparseable_audio_is_estimated_from_its_length(live_gateway, up):
    world = media_world([(up, "openai")], "speech")
    up.script(raw_reply(b"\x00\x01" * 16_000, content_type="audio/mpeg"))  # 32,000 bytes, no mp3 frame
    raw = world.sdk(live_gateway).audio.speech.with_raw_response.create(model="media", voice="alloy", input="hi")
    raw.content
    row = log_row(raw.headers["x-tokenbill-request-id"])
    # 32,000 bytes at the nominal 128 kbit/s of mp3 = 2 s, marked estimated
    assert row.usage_estimated and row.audio_seconds == Decimal("2.000")
    assert row.charge == micros(2 * PER_SECOND)


def test_failed_speech_charges_nothing_and_falls_back(live_gateway, up):
    with MediaFake(api_key="sk-second") as second:
        world = media_world([(up, "openai"), (second, "openai")], "speech")
        up.script(fail(503))
        raw = world.sdk(live_gateway).audio.speech.with_raw_response.create(model="media", voice="a", input="hi")
        raw.content
        assert len(second.requests) == 1
        assert log_row(raw.headers["x-tokenbill-request-id"]).charge == micros(3 * PER_SECOND) == charged(world.ve)
    with MediaFake(api_key="sk-solo") as solo:
        world = media_world([(solo, "openai")], "speech")
        solo.script(fail(500))
        with pytest.raises(openai.InternalServerError):
            world.sdk(live_gateway).audio.speech.create(model="media", voice="a", input="hi")
        assert charged(world.ve) == 0


def test_speech_parameters_are_checked(live_gateway, up):
    world = media_world([(up, "openai")], "speech")
    sdk = world.sdk(live_gateway)
    for kwargs in ({"response_format": "mp4"}, {"speed": 9}, {"input": ""}):
        with pytest.raises(openai.BadRequestError):
            sdk.audio.speech.create(**{"model": "media", "voice": "alloy", "input": "hi", **kwargs})
    assert up.requests == []


def test_speech_without_a_price_is_refused(live_gateway, up):
    world = media_world([(up, "openai")], "speech", physical_kw={"audio_cost_per_second": Decimal(0)})
    with pytest.raises(openai.BadRequestError) as exc:
        world.sdk(live_gateway).audio.speech.create(model="media", voice="alloy", input="hi")
    assert exc.value.code == "model_not_priced" and up.requests == []


def test_client_gone_mid_speech_is_charged_for_the_audio_produced(live_gateway, up):
    # given an upstream that keeps speaking (mp3 frames, 24 ms each) until the client leaves
    world = media_world([(up, "openai")], "speech")
    frame = audio_samples.mp3(0.024)

    async def endless(request):
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        try:
            for _ in range(5000):
                await resp.write(frame * 10)
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, ConnectionResetError):
            request[FAKE].cancelled += 1
            raise
        return resp

    up.script(endless)
    # when the client reads a little and hangs up
    with world.sdk(live_gateway).audio.speech.with_streaming_response.create(
            model="media", voice="alloy", input="x" * 300) as response:
        got = 0
        for chunk in response.iter_bytes():
            got += len(chunk)
            if got > 20_000:
                break
        request_id = response.headers["x-tokenbill-request-id"]
    # then the call is logged as disconnected and charged for what the gateway relayed
    row = log_row(request_id)
    assert row.status == "disconnected"
    assert Decimal("0.2") < row.audio_seconds < Decimal("20")
    assert row.charge == micros(row.audio_seconds * PER_SECOND) == charged(world.ve)
    # and the upstream call was cut too (it stops producing audio nobody hears)
    deadline = time.monotonic() + 3
    while not up.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.cancelled == 1
