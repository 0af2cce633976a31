"""Inbound APIs other than Chat Completions, served as a translation layer over it.

Each module converts its request to the gateway's internal form (an OpenAI chat body),
runs the same metered path as /v1/chat/completions (admission, routing with fallback,
the adapters, settle, ledger), and converts what that path sends back: a JSON answer, an
SSE stream of chat chunks, or an error, into its own wire format. Nothing upstream-facing
is duplicated: only the send() the chat path writes to is wrapped.
"""

from __future__ import annotations

import json

from gateway import auth, errors
from gateway.apis import completions, messages, responses
from gateway.responses import send_json

ROUTES = {("POST", "/v1/messages"): "messages", ("POST", "/v1/messages/count_tokens"): "count_tokens",
          ("POST", "/v1/responses"): "responses", ("POST", "/v1/completions"): "completions"}
KINDS = frozenset({*ROUTES.values(), "model"})
MODEL_PREFIX = "/v1/models/"


def route_of(method: str, path: str) -> str | None:
    """Routes with a path parameter: GET /v1/models/{model} (every SDK's models.retrieve)."""
    if method == "GET" and path.startswith(MODEL_PREFIX) and len(path) > len(MODEL_PREFIX):
        return "model"
    return None
_ERROR_BODIES = {"messages": messages.error_body, "count_tokens": messages.error_body}


async def handle(app, route, snapshot, ve, key, req, receive, send) -> None:
    from gateway.app import _read_json

    if route == "model":
        await _model(snapshot, ve, key, req, send)
        return
    body = await _read_json(receive, req)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise errors.bad_request("model: field required", param="model")
    if route == "count_tokens":
        auth.resolve_model(snapshot, ve, key, name)
        answer = json.dumps(messages.count_tokens(body)).encode()
        await send_json(send, 200, answer, req.request_id)
        return
    if not req.run_id:  # the format's metadata may name the run (X-TokenBill-Run-Id wins)
        from gateway.app import _metadata_run_id

        req.run_id = _metadata_run_id(body)
    if route == "completions":
        chat = completions.to_chat(body)
        wrapped, endpoint = completions.wrap_send(send, name), completions.ENDPOINT
    elif route == "responses":
        chat = responses.to_chat(body)
        wrapped, endpoint = responses.wrap_send(send, name, body), responses.ENDPOINT
    else:
        chat = messages.to_chat(body)
        wrapped, endpoint = messages.wrap_send(send, name), messages.ENDPOINT
    await app._metered("chat", snapshot, ve, key, chat, req, receive, wrapped, endpoint=endpoint)


async def send_error(send, exc: errors.GatewayError, req, route) -> None:
    """An error in the inbound API's own shape (the route says which); else OpenAI's."""
    render = _ERROR_BODIES.get(route)
    if render is None and route in ("models", "model") and req.anthropic_version:
        render = messages.error_body
    body = render(exc) if render is not None else exc.body()
    await send_json(send, exc.status, body, req.request_id, exc.headers)


async def _model(snapshot, ve, key, req, send) -> None:
    """One model the key may use; 404 (in the OpenAI or, with anthropic-version, the
    Anthropic shape) for any other, so a model's existence is not told to a key that may
    not use it."""
    from urllib.parse import unquote

    name = unquote(req.path[len(MODEL_PREFIX):])
    if name not in auth.model_names(snapshot, ve, key):
        raise errors.not_found(f"The model '{name}' does not exist or you do not have access to it.",
                               code="model_not_found", param="model")
    if req.anthropic_version:
        body = messages.models_list([name])["data"][0]
    else:
        body = {"id": name, "object": "model", "created": 0, "owned_by": "tokenbill"}
    await send_json(send, 200, json.dumps(body).encode(), req.request_id)


async def send_models(send, names: list[str], req) -> None:
    await send_json(send, 200, json.dumps(messages.models_list(names)).encode(), req.request_id)
