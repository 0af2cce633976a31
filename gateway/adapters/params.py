"""Each chat parameter's declared fate per upstream kind: passed, translated, or unsupported.

The OpenAI wire formats (openai, openai_compatible, azure_openai) pass the client's body
as it is, so every parameter is "passed". The translating formats (anthropic, gemini)
declare what they pass or translate; anything else the client sent is unsupported there,
and the logical model's policy (routing.models.UnsupportedParams) decides: "drop" removes
it and names it in the x-tokenbill-dropped-params response header, "reject" refuses the
call with a 400 naming the parameter. README "Parameters by provider" is this table.
"""

from __future__ import annotations

from gateway.adapters.shapes import bad_request

PASSED, TRANSLATED, UNSUPPORTED = "passed", "translated", "unsupported"

# Read by the gateway itself (routing, streaming, usage), never an upstream concern.
_GATEWAY = frozenset({"model", "messages", "stream", "stream_options"})

FATES: dict[str, dict[str, str]] = {
    "anthropic": {
        "max_tokens": TRANSLATED, "max_completion_tokens": TRANSLATED,  # -> max_tokens
        "temperature": TRANSLATED,  # clamped to Anthropic's 0..1
        "top_p": PASSED,
        "stop": TRANSLATED,  # -> stop_sequences
        "user": TRANSLATED,  # -> metadata.user_id
        "tools": TRANSLATED, "tool_choice": TRANSLATED, "parallel_tool_calls": TRANSLATED,
        "n": TRANSLATED,  # 1 only; n > 1 is a 400
        "reasoning_effort": TRANSLATED,  # -> thinking.budget_tokens
        "response_format": TRANSLATED,  # json_schema / json_object -> a forced tool
    },
    "gemini": {
        "max_tokens": TRANSLATED, "max_completion_tokens": TRANSLATED,  # -> maxOutputTokens
        "temperature": TRANSLATED, "top_p": TRANSLATED, "seed": TRANSLATED,
        "presence_penalty": TRANSLATED, "frequency_penalty": TRANSLATED,
        "stop": TRANSLATED,  # -> stopSequences
        "n": TRANSLATED,  # -> candidateCount
        "tools": TRANSLATED, "tool_choice": TRANSLATED,
        "reasoning_effort": TRANSLATED,  # -> thinkingConfig.thinkingBudget
        "response_format": TRANSLATED,  # -> responseMimeType + responseSchema
    },
}
# Parameters the README table lists for the translating kinds (the usual OpenAI ones).
KNOWN = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "n", "seed", "user",
         "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "tools",
         "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort", "service_tier",
         "store", "metadata", "modalities", "audio", "prediction", "web_search_options")


def fate(kind: str, param: str) -> str:
    if param in _GATEWAY:
        return PASSED
    table = FATES.get(kind)
    if table is None:  # the OpenAI wire formats: the body goes upstream as it is
        return PASSED
    return table.get(param, UNSUPPORTED)


def unsupported(kind: str, body: dict) -> list[str]:
    """The parameters of `body` that `kind` cannot take, sorted (None values count as absent)."""
    table = FATES.get(kind)
    if table is None:
        return []
    return sorted(k for k, v in body.items() if v is not None and k not in _GATEWAY and k not in table)


def apply_policy(kind: str, body: dict, policy: str) -> tuple[dict, list[str]]:
    """(body to translate, dropped names). policy "reject": a 400 naming the first one."""
    names = unsupported(kind, body)
    if not names:
        return body, names
    if policy == "reject":
        raise bad_request(f"Parameter '{names[0]}' is not supported by this model's provider ({kind}).",
                          param=names[0], code="unsupported_parameter")
    return {k: v for k, v in body.items() if k not in names}, names
