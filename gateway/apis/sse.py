"""What the chat path sends, read back: ASGI messages in, frames out (helpers for the
translating send() wrappers in messages.py and responses.py)."""

from __future__ import annotations

import json


def set_length(headers: list, length: int) -> list:
    out = [(k, v) for k, v in headers if k != b"content-length"]
    out.append((b"content-length", str(length).encode()))
    return out


def is_sse(headers) -> bool:
    return any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)


class FrameReader:
    """Splits the chat path's SSE bytes into frames: ("data", obj), ("done", None),
    ("comment", raw bytes). The chat path writes whole frames; a partial tail is kept."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data: bytes):
        self.buffer += data
        *frames, self.buffer = self.buffer.split(b"\n\n")
        for frame in frames:
            if not frame:
                continue
            if frame.startswith(b":"):
                yield "comment", frame + b"\n\n"
            elif frame.startswith(b"data: "):
                payload = frame[6:]
                if payload == b"[DONE]":
                    yield "done", None
                else:
                    yield "data", json.loads(payload)


def event(name: str, obj: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
