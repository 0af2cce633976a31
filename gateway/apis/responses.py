"""OpenAI Responses API (POST /v1/responses) over the chat path. Stateless: `store` is
accepted and nothing is stored; `previous_response_id` is refused (400) until the gateway
keeps conversations.

Wire format: https://platform.openai.com/docs/api-reference/responses (the Response object,
input items) and https://platform.openai.com/docs/api-reference/responses-streaming (typed
events: response.created, response.output_item.added, response.content_part.added,
response.output_text.delta/done, response.function_call_arguments.delta/done,
response.output_item.done, response.completed; response.failed, error).
"""

from __future__ import annotations

import json
import time

from gateway import errors
from gateway.apis.sse import FrameReader, event, is_sse, set_length

ENDPOINT = "responses"


def _bad(message: str, param: str | None = None) -> errors.GatewayError:
    return errors.bad_request(message, param=param)


def error_body(exc: errors.GatewayError) -> bytes:
    """OpenAI's error shape, as for chat (budget_exhausted carries checkout_url)."""
    return exc.body()


# --- request: Responses -> chat ----------------------------------------------------------
def _content(content, param: str):
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts.", param)
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"Unsupported content part type {kind!r} in '{param}'.", param)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _items(items: list) -> list[dict]:
    out: list[dict] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{param}' must be an object.", param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"'{param}.role' must be user, assistant, system or developer.", param)
            out.append({"role": "system" if role == "developer" else role,
                        "content": _content(item.get("content"), f"{param}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") is not None:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else json.dumps(output)})
        elif kind == "reasoning":
            continue  # a previous turn's reasoning summary: not replayable through other providers
        else:
            raise _bad(f"Unsupported input item type {kind!r}.", param)
    return out


def to_chat(body: dict) -> dict:
    if body.get("previous_response_id"):
        raise _bad("previous_response_id is not supported: this gateway is stateless. Send the whole "
                   "conversation in 'input'.", "previous_response_id")
    if body.get("conversation"):
        raise _bad("conversation is not supported: this gateway is stateless.", "conversation")
    value = body.get("input")
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value:
        messages = _items(value)
    else:
        raise _bad("'input' must be a string or a non-empty array of items.", "input")
    if body.get("instructions"):
        if not isinstance(body["instructions"], str):
            raise _bad("'instructions' must be a string.", "instructions")
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    out: dict = {"model": body.get("model"), "messages": messages}
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(name) is not None:
            out[name] = body[name]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _bad("'tools' must be an array.", "tools")
        out["tools"] = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise _bad("Only function tools are supported.", "tools")
            function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {"type": "object"}}
            if tool.get("description"):
                function["description"] = tool["description"]
            if tool.get("strict") is not None:
                function["strict"] = tool["strict"]
            out["tools"].append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = {"name": fmt.get("name") or "output", "schema": fmt.get("schema") or {}}
            if fmt.get("strict") is not None:
                schema["strict"] = fmt["strict"]
            out["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            out["response_format"] = {"type": "json_object"}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        out["reasoning_effort"] = reasoning["effort"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- answer: chat -> Response ------------------------------------------------------------
def response_id(chat_id: str) -> str:
    raw = chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) else ""
    return raw if raw.startswith("resp_") else "resp_" + raw


def usage_of(usage: dict | None) -> dict:
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    out = {"input_tokens": prompt,
           "input_tokens_details": {"cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                                    or 0},
           "output_tokens": completion,
           "output_tokens_details": {"reasoning_tokens": (usage.get("completion_tokens_details") or {}).get(
               "reasoning_tokens") or 0},
           "total_tokens": usage.get("total_tokens") or prompt + completion}
    if "cost" in usage:
        out["cost"] = usage["cost"]
    return out


def envelope(rid: str, model: str, request: dict, status: str, output: list, usage: dict | None) -> dict:
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status, "model": model,
            "output": output, "usage": usage, "error": None, "incomplete_details": None,
            "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
            "metadata": request.get("metadata") or {}, "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
            "store": False, "temperature": request.get("temperature"), "text": request.get("text") or
            {"format": {"type": "text"}}, "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [], "top_p": request.get("top_p"), "truncation": "disabled"}


def _message_item(rid: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": "msg_" + rid.removeprefix("resp_"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []}


def _call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"type": "function_call", "id": "fc_" + (call_id or "").removeprefix("call_"), "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def from_chat(payload: dict, model: str, request: dict) -> dict:
    rid = response_id(payload.get("id") or "")
    choice = (payload.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict] = []
    if message.get("content"):
        output.append(_message_item(rid, message["content"]))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(_call_item(call.get("id"), function.get("name"), function.get("arguments") or ""))
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    out = envelope(rid, model, request, status, output, usage_of(payload.get("usage")))
    if status == "incomplete":
        out["incomplete_details"] = {"reason": "max_output_tokens"}
    return out


class StreamTranslator:
    """Chat chunks in, Responses events out."""

    def __init__(self, model: str, request: dict):
        self.model, self.request = model, request
        self.seq = 0
        self.rid = ""
        self.output: list[dict] = []  # finished items, in order
        self.text: str | None = None  # the open message item's text
        self.call: dict | None = None  # the open function_call item
        self.call_key = None
        self.usage: dict | None = None
        self.finish = None
        self.finished = False

    def _ev(self, kind: str, **fields) -> bytes:
        obj = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event(kind, obj)

    def _start(self, chunk: dict) -> bytes:
        self.rid = response_id(chunk.get("id") or "")
        pending = envelope(self.rid, self.model, self.request, "in_progress", [], None)
        return self._ev("response.created", response=pending) + self._ev("response.in_progress", response=pending)

    def _close(self) -> bytes:
        out = b""
        index = len(self.output)
        if self.text is not None:
            item = _message_item(self.rid, self.text)
            part = item["content"][0]
            out += self._ev("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=self.text, logprobs=[])
            out += self._ev("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part)
            out += self._ev("response.output_item.done", output_index=index, item=item)
            self.output.append(item)
            self.text = None
        elif self.call is not None:
            item = {**self.call, "status": "completed"}
            out += self._ev("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                            arguments=item["arguments"], name=item["name"])
            out += self._ev("response.output_item.done", output_index=index, item=item)
            self.output.append(item)
            self.call = self.call_key = None
        return out

    def chunk(self, chunk: dict) -> bytes:
        out = b"" if self.rid else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        index = len(self.output)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.text is None:
                    out += self._close()
                    index = len(self.output)
                    item = _message_item(self.rid, "", "in_progress")
                    self.text = ""
                    out += self._ev("response.output_item.added", output_index=index, item=item)
                    out += self._ev("response.content_part.added", item_id=item["id"], output_index=index,
                                    content_index=0, part={"type": "output_text", "text": "", "annotations": []})
                self.text += delta["content"]
                out += self._ev("response.output_text.delta", item_id="msg_" + self.rid.removeprefix("resp_"),
                                output_index=index, content_index=0, delta=delta["content"], logprobs=[])
            for call in delta.get("tool_calls") or ():
                key = call.get("index", 0)
                function = call.get("function") or {}
                if self.call is None or self.call_key != key:
                    out += self._close()
                    index = len(self.output)
                    self.call = _call_item(call.get("id"), function.get("name"), "", "in_progress")
                    self.call_key = key
                    out += self._ev("response.output_item.added", output_index=index, item=dict(self.call))
                if function.get("arguments"):
                    self.call["arguments"] += function["arguments"]
                    out += self._ev("response.function_call_arguments.delta", item_id=self.call["id"],
                                    output_index=index, delta=function["arguments"])
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = (b"" if self.rid else self._start({})) + self._close()
        status = "incomplete" if self.finish == "length" else "completed"
        final = envelope(self.rid, self.model, self.request, status, self.output, usage_of(self.usage))
        if status == "incomplete":
            final["incomplete_details"] = {"reason": "max_output_tokens"}
            return out + self._ev("response.incomplete", response=final)
        return out + self._ev("response.completed", response=final)

    def failed(self, obj: dict) -> bytes:
        self.finished = True
        inner = obj.get("error") or {}
        final = envelope(self.rid, self.model, self.request, "failed", self.output, usage_of(self.usage))
        final["error"] = {"code": "server_error", "message": inner.get("message") or "error"}
        return self._ev("response.failed", response=final)


def wrap_send(send, model: str, request: dict):
    state: dict = {}

    async def translated(message):
        if message["type"] == "http.response.start":
            state["start"] = message
            state["sse"] = is_sse(message["headers"])
            if state["sse"]:
                state["reader"], state["tr"] = FrameReader(), StreamTranslator(model, request)
                await send(message)
            return
        body = message.get("body", b"")
        if not state.get("sse"):
            start = state["start"]
            if start["status"] == 200:
                body = json.dumps(from_chat(json.loads(body), model, request)).encode()
            await send({**start, "headers": set_length(start["headers"], len(body))})
            await send({"type": "http.response.body", "body": body})
            return
        out = b""
        tr = state["tr"]
        for kind, value in state["reader"].feed(body):
            if kind == "data":
                out += tr.failed(value) if "error" in value and "choices" not in value else tr.chunk(value)
            elif kind == "done":
                out += tr.end()
            else:
                out += value
        await send({"type": "http.response.body", "body": out, "more_body": message.get("more_body", False)})

    return translated
