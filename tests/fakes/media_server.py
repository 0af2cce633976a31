"""Fake OpenAI / Azure upstreams that also serve images, speech and transcription.

Adds routes to tests/fakes/openai_server.py's fakes (chat and embeddings still answer):

    POST .../images/generations      n images, as url or b64_json (response_format);
                                     `images_returned` (if set) answers with fewer (a partial answer)
    POST .../audio/speech            `speech_seconds` of audio in the asked response_format
                                     (tests/fakes/audio_samples.py), written in `speech_chunks` pieces
    POST .../audio/transcriptions    the transcript in every response_format: json, text, srt, vtt,
    POST .../audio/translations      verbose_json (each with its own content type)

    with MediaFake(api_key="sk-1") as up:
        up.speech_seconds = 2.4
"""

from __future__ import annotations

import asyncio
import base64
from email import policy
from email.parser import BytesParser

from aiohttp import web

from tests.fakes import audio_samples
from tests.fakes.openai_server import AzureFake, OpenAIFake
from tests.fakes.server import RECORDED

TRANSCRIPT = "Hello from the fake transcriber."
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                "wav": "audio/wav", "pcm": "audio/pcm"}


class MediaMixin:
    speech_seconds: float = 3.0
    speech_chunks: int = 4
    images_returned: int | None = None

    def media_endpoint(self, request) -> str:
        parts = request.path.strip("/").split("/")
        return "/".join(parts[-2:])

    async def default(self, request: web.Request) -> web.StreamResponse:
        endpoint = self.media_endpoint(request)
        handler = {"images/generations": self.images, "audio/speech": self.speech,
                   "audio/transcriptions": self.transcribe, "audio/translations": self.transcribe}.get(endpoint)
        if handler is None or not self.authorized(request):
            return await super().default(request)
        return await handler(request)

    async def images(self, request):
        body = request[RECORDED].json or {}
        n = body.get("n") or 1
        count = n if self.images_returned is None else self.images_returned
        if body.get("response_format") == "b64_json":
            data = [{"b64_json": base64.b64encode(PNG_1PX).decode()} for _ in range(count)]
        else:
            data = [{"url": f"https://images.example/{i}.png"} for i in range(count)]
        return web.json_response({"created": 1700000000, "data": data})

    async def speech(self, request):
        body = request[RECORDED].json or {}
        fmt = body.get("response_format") or "mp3"
        audio = audio_samples.BUILDERS[fmt](self.speech_seconds)
        resp = web.StreamResponse(headers={"Content-Type": SPEECH_TYPES[fmt]})
        await resp.prepare(request)
        step = -(-len(audio) // self.speech_chunks)
        for i in range(0, len(audio), step):
            await resp.write(audio[i:i + step])
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def transcribe(self, request):
        form = await _form(request)
        fmt = form.get("response_format") or "json"
        if fmt == "text":
            return web.Response(text=TRANSCRIPT, content_type="text/plain")
        if fmt == "srt":
            return web.Response(text=f"1\n00:00:00,000 --> 00:00:02,000\n{TRANSCRIPT}\n\n", content_type="text/plain")
        if fmt == "vtt":
            return web.Response(text=f"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n{TRANSCRIPT}\n\n",
                                content_type="text/vtt")
        if fmt == "verbose_json":
            return web.json_response({"task": "transcribe", "language": "english", "duration": 2.0,
                                      "text": TRANSCRIPT, "segments": [{"id": 0, "start": 0.0, "end": 2.0,
                                                                        "text": TRANSCRIPT}]})
        return web.json_response({"text": TRANSCRIPT})


async def _form(request) -> dict:
    """Parse the upload with the stdlib email parser (independent of gateway/multipart.py,
    so the gateway's encoder is checked by someone else's parser). Fields go in rec.form,
    files in rec.files: {field: (filename, content_type, bytes)}."""
    rec = request[RECORDED]
    head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + rec.body)
    fields, files = [], {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            files[name] = (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
        else:
            fields.append((name, part.get_payload(decode=True).decode()))
    rec.form, rec.files = fields, files
    return dict(fields)


class MediaFake(MediaMixin, OpenAIFake):
    pass


class AzureMediaFake(MediaMixin, AzureFake):
    pass
