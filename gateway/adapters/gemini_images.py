"""Gemini's image models (Imagen) behind /v1/images/generations: `models/{model}:predict`.

    OpenAI  {"prompt", "n", "size", "response_format"}
    Imagen  {"instances": [{"prompt"}], "parameters": {"sampleCount": n, "aspectRatio": "16:9"}}
    answer  {"predictions": [{"bytesBase64Encoded", "mimeType"}]} -> {"created", "data": [{"b64_json"}]}

Imagen returns image bytes only: response_format "url" is a 400 (b64_json is the default
here). The size becomes the nearest aspect ratio Imagen offers (1:1, 3:4, 4:3, 9:16, 16:9,
within 3%); other sizes are a 400. Quality is not sent (it still selects the price).
"""

from __future__ import annotations

import time

from gateway.adapters.base import UpstreamError

ASPECT_RATIOS = {"1:1": 1.0, "3:4": 0.75, "4:3": 4 / 3, "9:16": 9 / 16, "16:9": 16 / 9}


def _refuse(message: str, param: str) -> UpstreamError:
    return UpstreamError(400, message, transient=False, type="invalid_request_error", param=param)


def aspect_ratio(size: str | None) -> str:
    if not size:
        return "1:1"
    try:
        width, height = (int(x) for x in size.lower().split("x"))
        ratio = width / height
    except (ValueError, ZeroDivisionError):
        raise _refuse(f"Size '{size}' is not WIDTHxHEIGHT.", "size") from None
    for name, value in ASPECT_RATIOS.items():
        if abs(ratio - value) / value <= 0.03:
            return name
    raise _refuse(f"Size '{size}' has no matching aspect ratio on this provider.", "size")


def translate_request(body: dict) -> dict:
    if body.get("response_format") == "url":
        raise _refuse("This provider returns images as b64_json only.", "response_format")
    return {"instances": [{"prompt": body["prompt"]}],
            "parameters": {"sampleCount": body.get("n") or 1, "aspectRatio": aspect_ratio(body.get("size"))}}


def translate_response(payload: dict) -> dict:
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if predictions is None and isinstance(payload, dict):
        predictions = []  # every image filtered out (safety): an answer with no image
    if not isinstance(predictions, list):
        raise UpstreamError(502, "The upstream model returned an invalid image answer.", transient=True,
                            code="bad_upstream_answer")
    data = [{"b64_json": p["bytesBase64Encoded"]} for p in predictions
            if isinstance(p, dict) and p.get("bytesBase64Encoded")]
    return {"created": int(time.time()), "data": data}
