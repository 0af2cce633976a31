"""Errors the gateway answers with, rendered in OpenAI's error shape:
{"error": {"message", "type", "code", "param"}}. Messages never name a credential or URL."""

from __future__ import annotations

import json


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: list[tuple[bytes, bytes]] | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []
        self.extra = extra or {}

    def payload(self) -> dict:
        error = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        error.update(self.extra)
        return {"error": error}

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def unauthorized(message: str = "Incorrect API key provided.") -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


def forbidden(message: str, code: str = "model_not_allowed") -> GatewayError:
    return GatewayError(403, message, type="permission_error", code=code)


def not_found(message: str, code: str = "not_found", param: str | None = None) -> GatewayError:
    return GatewayError(404, message, code=code, param=param)


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")


def retry_after_header(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, int(seconds + 0.999))).encode())]


def all_failed(kind: str, retry_after: float | None = None) -> GatewayError:
    """Every route failed. kind: 'bad_answer' (502), 'unavailable' (503), 'timeout' (504)."""
    if kind == "timeout":
        return GatewayError(504, "The upstream model timed out.", type="api_error", code="upstream_timeout")
    if kind == "unavailable":
        headers = retry_after_header(retry_after) if retry_after else []
        return GatewayError(503, "No upstream model is available right now. Try again later.", type="api_error",
                            code="upstream_unavailable", headers=headers)
    return GatewayError(502, "The upstream model returned an invalid answer.", type="api_error",
                        code="upstream_error")


def stream_error_event(error: GatewayError) -> bytes:
    """OpenAI's streaming error shape: one SSE event carrying {"error": {...}}."""
    return b"data: " + error.body() + b"\n\n"
