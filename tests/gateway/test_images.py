"""POST /v1/images/generations through the live gateway with the openai SDK: billed per
image returned, by size and quality, reserved exactly, nothing for a failed call."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing.money import to_micros

from tests.fakes.media_server import AzureMediaFake, MediaFake
from tests.fakes.openai_server import fail
from tests.gateway.media_world import IMAGE_COSTS, RATE, charged, log_row, media_world, micros

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def up():
    with MediaFake(api_key="sk-img") as fake:
        yield fake


def cost_charge(size: str, quality: str, n: int) -> int:
    return micros(Decimal(IMAGE_COSTS[size][quality]) * RATE * n)  # markup 1


@pytest.mark.parametrize("size,quality,response_format", [
    ("1024x1024", "standard", "url"), ("1024x1024", "hd", "b64_json"),
    ("1792x1024", "standard", "b64_json"), ("1792x1024", "hd", "url"),
])
def test_two_images_charged_by_the_price_table(live_gateway, up, size, quality, response_format):
    # given an image model priced from its physical cost table (USD x rate x markup)
    world = media_world([(up, "openai")], "image")
    # when two images are generated through the gateway
    raw = world.sdk(live_gateway).images.with_raw_response.generate(
        model="media", prompt="a red fox", n=2, size=size, quality=quality, response_format=response_format)
    result = raw.parse()
    # then both images came back in the asked format, and the charge is the table's price x 2
    assert len(result.data) == 2
    assert all((item.url if response_format == "url" else item.b64_json) for item in result.data)
    expected = cost_charge(size, quality, 2)
    assert to_micros(raw.headers["x-tokenbill-charge"]) == expected
    row = log_row(raw.headers["x-tokenbill-request-id"])
    assert (row.images, row.charge, row.endpoint, row.status) == (2, expected, "images.generations", "ok")
    assert row.price_snapshot["reserved"] == expected  # the hold was exact: n x price(size, quality)
    assert charged(world.ve) == expected
    sent = up.requests[-1]
    assert sent.path == "/v1/images/generations" and sent.json["model"] == "up-image-0"
    assert (sent.json["n"], sent.json["size"], sent.json["quality"]) == (2, size, quality)


def test_logical_sale_price_wins_over_cost(live_gateway, up):
    # given a logical model with its own price in credits for one size/quality
    world = media_world([(up, "openai")], "image", model_kw={"image_prices": {"1024x1024": {"standard": "7.5"}}})
    # when
    raw = world.sdk(live_gateway).images.with_raw_response.generate(model="media", prompt="x", n=2,
                                                                    size="1024x1024", quality="standard")
    raw.parse()
    # then 2 x 7.5 credits, whatever the provider cost
    assert to_micros(raw.headers["x-tokenbill-charge"]) == micros("15")


def test_partial_answer_charges_only_images_that_arrived(live_gateway, up):
    # given an upstream that returns one image when asked for three
    world = media_world([(up, "openai")], "image")
    up.images_returned = 1
    # when
    raw = world.sdk(live_gateway).images.with_raw_response.generate(model="media", prompt="x", n=3,
                                                                    size="1024x1024", quality="hd")
    assert len(raw.parse().data) == 1
    # then one image is charged; three were held
    row = log_row(raw.headers["x-tokenbill-request-id"])
    assert row.charge == cost_charge("1024x1024", "hd", 1) == charged(world.ve)
    assert row.images == 1 and row.price_snapshot["reserved"] == cost_charge("1024x1024", "hd", 3)


def test_failed_image_call_charges_nothing(live_gateway, up):
    # given an upstream that fails (server error, then a client error)
    world = media_world([(up, "openai")], "image")
    up.script(fail(500), fail(400, message="prompt refused by the safety system"))
    sdk = world.sdk(live_gateway)
    # when
    with pytest.raises(openai.InternalServerError):
        sdk.images.generate(model="media", prompt="x", n=2)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="media", prompt="x", n=2)
    # then nothing was charged, nothing is held, and the client saw the upstream's reason
    assert "safety" in refused.value.message
    assert charged(world.ve) == 0
    world.ve.refresh_from_db()
    assert world.ve.credit_spend == 0


def test_unpriced_size_is_refused_before_the_upstream(live_gateway, up):
    world = media_world([(up, "openai")], "image")
    # when a size nobody priced is asked for
    with pytest.raises(openai.BadRequestError) as exc:
        world.sdk(live_gateway).images.generate(model="media", prompt="x", size="256x256")
    # then a clear 400 and no upstream call
    assert exc.value.code == "model_not_priced" and "256x256" in exc.value.message
    assert up.requests == []


def test_fallback_serves_and_charges_once(live_gateway, up):
    # given two routes; the first fails with 503
    with MediaFake(api_key="sk-second") as second:
        world = media_world([(up, "openai"), (second, "openai_compatible")], "image")
        up.script(fail(503))
        # when
        raw = world.sdk(live_gateway).images.with_raw_response.generate(model="media", prompt="x", n=2)
        raw.parse()
        # then the second route served; one charge
        assert len(second.requests) == 1
        row = log_row(raw.headers["x-tokenbill-request-id"])
        assert [a["status"] for a in row.attempts] == [503, 200]
        assert charged(world.ve) == cost_charge("1024x1024", "standard", 2)


def test_azure_images_use_the_deployment_url(live_gateway):
    with AzureMediaFake(api_key="azure-img") as azure:
        world = media_world([(azure, "azure_openai")], "image")
        result = world.sdk(live_gateway).images.generate(model="media", prompt="x", n=1, response_format="b64_json")
        assert result.data[0].b64_json
        sent = azure.requests[-1]
        assert sent.path == "/openai/deployments/up-image-0/images/generations"
        assert sent.query["api-version"] == "2024-10-21" and sent.headers["api-key"] == "azure-img"
        assert charged(world.ve) == cost_charge("1024x1024", "standard", 1)


def test_other_modalities_are_refused(live_gateway, up):
    # given an image model and a chat model on the same VE
    world = media_world([(up, "openai")], "image")
    sdk = world.sdk(live_gateway)
    # when the image model is called for chat, or a speech call names the image model
    with pytest.raises(openai.BadRequestError) as chat:
        sdk.chat.completions.create(model="media", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as speech:
        sdk.audio.speech.create(model="media", voice="alloy", input="hello")
    # then both are 400s before any upstream call
    assert chat.value.code == speech.value.code == "model_not_supported"
    assert up.requests == []


def test_provider_kind_without_images_is_a_clear_400(live_gateway, up):
    world = media_world([(up, "anthropic")], "image")  # Anthropic has no image models
    with pytest.raises(openai.BadRequestError) as exc:
        world.sdk(live_gateway).images.generate(model="media", prompt="x")
    assert "not supported for this provider kind" in exc.value.message
    assert up.requests == [] and charged(world.ve) == 0


def test_bad_image_parameters_are_400(live_gateway, up):
    world = media_world([(up, "openai")], "image")
    sdk = world.sdk(live_gateway)
    for kwargs in ({"n": 0}, {"n": 11}, {"response_format": "png"}):
        with pytest.raises(openai.BadRequestError):
            sdk.images.generate(model="media", prompt="x", **kwargs)
    assert up.requests == []


def test_gemini_imagen_models_answer_in_openai_shape(live_gateway):
    from tests.fakes.gemini_server import GeminiFake
    from tests.fakes.server import json_reply

    with GeminiFake(api_key="AIza-img") as gemini:
        world = media_world([(gemini, "gemini")], "image")
        # given Imagen answers two images (base64 bytes)
        gemini.script(json_reply({"predictions": [{"bytesBase64Encoded": "aW1n", "mimeType": "image/png"}] * 2}))
        sdk = world.sdk(live_gateway)
        # when
        raw = sdk.images.with_raw_response.generate(model="media", prompt="a fox", n=2, size="1792x1024",
                                                    quality="hd")
        result = raw.parse()
        # then the OpenAI shape came back, priced like any other image, from :predict with an aspect ratio
        assert [d.b64_json for d in result.data] == ["aW1n", "aW1n"]
        assert to_micros(raw.headers["x-tokenbill-charge"]) == cost_charge("1792x1024", "hd", 2)
        sent = gemini.requests[-1]
        assert sent.path.endswith("/models/up-image-0:predict") and sent.headers["x-goog-api-key"] == "AIza-img"
        assert sent.json == {"instances": [{"prompt": "a fox"}], "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}}
        # and a URL answer, which Imagen cannot give, is a 400 before any upstream call
        with pytest.raises(openai.BadRequestError):
            sdk.images.generate(model="media", prompt="x", response_format="url")
        assert len(gemini.requests) == 1


@pytest.mark.parametrize("size,ratio", [(None, "1:1"), ("1024x1024", "1:1"), ("1792x1024", "16:9"),
                                        ("1024x1792", "9:16"), ("1024x768", "4:3"), ("1536x1024", None)])
def test_imagen_aspect_ratio_from_size(size, ratio):
    from gateway.adapters.base import UpstreamError
    from gateway.adapters.gemini_images import aspect_ratio

    if ratio is None:
        with pytest.raises(UpstreamError) as exc:
            aspect_ratio(size)
        assert exc.value.status == 400 and not exc.value.transient
    else:
        assert aspect_ratio(size) == ratio


def test_run_id_from_header_reaches_the_request_log(live_gateway, up):
    world = media_world([(up, "openai")], "image")
    raw = world.sdk(live_gateway).images.with_raw_response.generate(
        model="media", prompt="x", extra_headers={"X-TokenBill-Run-Id": "run-images-1"})
    raw.parse()
    assert log_row(raw.headers["x-tokenbill-request-id"]).run_id == "run-images-1"
