"""POST /v1/audio/transcriptions and /translations through the live gateway with the openai
SDK: the upload is checked (413, 400) and measured before any upstream call, the hold is
exact, every response_format is billed the same, the upstream's answer passes through."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from billing.money import to_micros

from gateway import multipart
from tests.fakes import audio_samples
from tests.fakes.media_server import TRANSCRIPT, MediaFake
from tests.fakes.openai_server import fail
from tests.gateway.media_world import AUDIO_COST, RATE, charged, log_row, media_world, micros

pytestmark = pytest.mark.django_db(transaction=True)
PER_SECOND = AUDIO_COST * RATE


@pytest.fixture
def up():
    with MediaFake(api_key="sk-stt") as fake:
        yield fake


@pytest.mark.parametrize("fmt,expected_type", [
    ("json", "application/json"), ("text", "text/plain"), ("srt", "text/plain"), ("vtt", "text/vtt"),
    ("verbose_json", "application/json"),
])
def test_every_format_reserves_exactly_and_settles_the_same(live_gateway, up, fmt, expected_type):
    # given a 7.5 second wav upload
    world = media_world([(up, "openai")], "transcription")
    clip = audio_samples.wav(7.5)
    # when
    raw = world.sdk(live_gateway).audio.transcriptions.with_raw_response.create(
        model="media", file=("clip.wav", clip, "audio/wav"), response_format=fmt)
    result = raw.parse()
    # then the upstream's answer passed through with its content type
    assert raw.headers["content-type"].startswith(expected_type)
    text = result if isinstance(result, str) else result.text
    assert TRANSCRIPT in text
    # and the hold was exactly the measured seconds, and so was the charge
    expected = micros(Decimal("7.5") * PER_SECOND)
    row = log_row(raw.headers["x-tokenbill-request-id"])
    assert row.price_snapshot["reserved"] == row.charge == expected == to_micros(raw.headers["x-tokenbill-charge"])
    assert row.audio_seconds == Decimal("7.500") and row.endpoint == "audio.transcriptions"
    assert charged(world.ve) == expected


@pytest.mark.parametrize("name,builder,seconds", [
    ("a.mp3", audio_samples.mp3, 2.4), ("a.flac", audio_samples.flac, 2.0), ("a.ogg", audio_samples.opus, 2.0),
    ("a.m4a", audio_samples.mp4, 3.25),
])
def test_uploads_of_other_formats_are_measured(live_gateway, up, name, builder, seconds):
    world = media_world([(up, "openai")], "transcription")
    raw = world.sdk(live_gateway).audio.transcriptions.with_raw_response.create(
        model="media", file=(name, builder(seconds)))
    raw.parse()
    row = log_row(raw.headers["x-tokenbill-request-id"])
    assert abs(row.audio_seconds - Decimal(str(seconds))) <= Decimal(str(seconds)) / 100
    assert row.charge == micros(row.audio_seconds * PER_SECOND)


def test_translation_forwards_the_form_unchanged_but_the_model(live_gateway, up):
    world = media_world([(up, "openai")], "transcription")
    clip = audio_samples.mp3(1.2)
    raw = world.sdk(live_gateway).audio.translations.with_raw_response.create(
        model="media", file=("speech.mp3", clip, "audio/mpeg"), prompt="Ünïcode prompt", response_format="text")
    assert TRANSCRIPT in raw.parse()
    sent = up.requests[-1]
    assert sent.path == "/v1/audio/translations"
    assert dict(sent.form) == {"model": "up-transcription-0", "prompt": "Ünïcode prompt", "response_format": "text"}
    assert sent.files["file"] == ("speech.mp3", "audio/mpeg", clip)
    assert log_row(raw.headers["x-tokenbill-request-id"]).endpoint == "audio.translations"


def test_repeated_fields_reach_the_upstream(live_gateway, up):
    world = media_world([(up, "openai")], "transcription")
    world.sdk(live_gateway).audio.transcriptions.create(
        model="media", file=("a.wav", audio_samples.wav(1.0)), response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en")
    fields = up.requests[-1].form
    assert [v for k, v in fields if k == "timestamp_granularities[]"] == ["word", "segment"]


def test_upload_over_the_limit_is_413_before_the_upstream(live_gateway, up, settings):
    settings.GATEWAY_MAX_UPLOAD_BYTES = 100_000
    world = media_world([(up, "openai")], "transcription")
    with pytest.raises(openai.APIStatusError) as exc:
        world.sdk(live_gateway).audio.transcriptions.create(model="media", file=("a.wav", audio_samples.wav(3.0)))
    assert exc.value.status_code == 413
    # a chunked upload (no Content-Length) is cut off at the limit too
    def body():
        for _ in range(20):
            yield b"x" * 10_000

    resp = httpx.post(f"{live_gateway.url}/v1/audio/transcriptions", content=body(), timeout=10,
                      headers={"Authorization": f"Bearer {world.secret}",
                               "Content-Type": "multipart/form-data; boundary=abc"})
    assert resp.status_code == 413
    assert up.requests == [] and charged(world.ve) == 0


@pytest.mark.parametrize("name,data", [
    ("notes.txt", b"just some text, not audio"),
    ("clip.wav", b"RIFF but not really a wave file at all......"),
    ("clip.exe", audio_samples.wav(1.0)),
    ("clip.flac", audio_samples.flac(1.0)[:8] + b"\x00" * 200),  # STREAMINFO without a length
])
def test_wrong_or_unreadable_files_are_400_before_the_upstream(live_gateway, up, name, data):
    world = media_world([(up, "openai")], "transcription")
    with pytest.raises(openai.BadRequestError) as exc:
        world.sdk(live_gateway).audio.transcriptions.create(model="media", file=(name, data))
    assert exc.value.code == "invalid_file_format"
    assert up.requests == []


def test_not_multipart_is_400(live_gateway, up):
    world = media_world([(up, "openai")], "transcription")
    resp = httpx.post(f"{live_gateway.url}/v1/audio/transcriptions", json={"model": "media"},
                      headers={"Authorization": f"Bearer {world.secret}"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_multipart"


def test_failed_transcription_releases_the_hold(live_gateway, up):
    world = media_world([(up, "openai")], "transcription")
    up.script(fail(500))
    with pytest.raises(openai.InternalServerError):
        world.sdk(live_gateway).audio.transcriptions.create(model="media", file=("a.wav", audio_samples.wav(2.0)))
    assert charged(world.ve) == 0
    world.ve.refresh_from_db()
    assert world.ve.credit_spend == 0


def test_budget_too_small_for_the_upload_is_refused(live_gateway, up):
    # given a VE with 5 credits; 1 second costs 10
    world = media_world([(up, "openai")], "transcription", credits="5")
    with pytest.raises(openai.RateLimitError) as exc:
        world.sdk(live_gateway).audio.transcriptions.create(model="media", file=("a.wav", audio_samples.wav(1.0)))
    assert exc.value.code == "budget_exhausted" and up.requests == []


# --- the multipart parser ----------------------------------------------------------------------
CT = "multipart/form-data; boundary=XyZ"


def test_multipart_parser_round_trip():
    upload = multipart.UploadedFile("file", "a.wav", "audio/wav", b"\r\n--not-the-boundary\r\n" + bytes(range(256)))
    body, content_type = multipart.encode([("model", "m"), ("k", "v1"), ("k", "v2")], [upload])
    form = multipart.parse(body, content_type)
    assert form.fields == [("model", "m"), ("k", "v1"), ("k", "v2")] and form.files["file"] == upload


@pytest.mark.parametrize("body,content_type", [
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n", CT),  # never closed
    (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\n1\r\n--XyZ--\r\n", CT),  # part without a name
    (b"--XyZ\r\nno header end\r\n--XyZ--\r\n", CT),
    (b"".join(b"--XyZ\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i for i in range(65))
     + b"--XyZ--\r\n", CT),  # too many parts
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"big\"\r\n\r\n" + b"x" * 70_000 + b"\r\n--XyZ--\r\n", CT),
    (b"whatever", "multipart/form-data"),  # no boundary
    (b"whatever", "application/json"),
])
def test_multipart_parser_refuses_malformed_bodies(body, content_type):
    with pytest.raises(multipart.MultipartError):
        multipart.parse(body, content_type)


def test_large_upload_is_parsed_and_measured_exactly(live_gateway, up):
    # given an 8 MB mp3 (500 s): parsed and measured in a worker thread (over OFF_LOOP_BYTES)
    world = media_world([(up, "openai")], "transcription")
    clip = audio_samples.mp3(500.016)
    assert len(clip) > 7_000_000
    raw = world.sdk(live_gateway, timeout=60).audio.transcriptions.with_raw_response.create(
        model="media", file=("long.mp3", clip))
    raw.parse()
    row = log_row(raw.headers["x-tokenbill-request-id"])
    assert row.audio_seconds == Decimal("500.016")
    assert row.price_snapshot["reserved"] == row.charge == micros(Decimal("500.016") * PER_SECOND)
    assert up.requests[-1].files["file"][2] == clip
