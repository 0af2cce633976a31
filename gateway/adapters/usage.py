"""One reader for every upstream's usage block (issue 15: usage is never zero by accident).

`read_usage(raw, flavor)` returns a normalized Usage, or None when the block says nothing
usable ("unknown": the gateway then estimates with tiktoken and flags the call). It reads
each field in every documented shape:

- OpenAI Chat Completions: prompt_tokens / completion_tokens / total_tokens, cached reads
  in prompt_tokens_details.cached_tokens (prompt_tokens includes them)
  (https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage)
- OpenAI Responses: input_tokens / output_tokens, input_tokens_details.cached_tokens
  (https://platform.openai.com/docs/api-reference/responses/object#responses/object-usage)
- Anthropic Messages: input_tokens (excludes cache reads and writes), output_tokens,
  cache_read_input_tokens, cache_creation_input_tokens
  (https://docs.anthropic.com/en/api/messages#response-usage)
- Gemini usageMetadata: promptTokenCount (+ toolUsePromptTokenCount; includes
  cachedContentTokenCount), candidatesTokenCount + thoughtsTokenCount, totalTokenCount
  (https://ai.google.dev/api/generate-content#UsageMetadata)

Counts may come as numeric strings (some OpenAI-compatible servers); negatives, bools and
other junk are ignored. A block with only a total (total_tokens / totalTokenCount) is read
as that many input tokens, flagged estimated (the split is unknown; the cheaper rate, never
0); the proxy's plausibility check may still replace it with an estimate.
"""

from __future__ import annotations

from gateway.adapters.base import Usage


def count(value) -> int | None:
    """A token count from an int or a numeric string; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
    return None


def _first(raw: dict, *names: str) -> int | None:
    for name in names:
        value = count(raw.get(name))
        if value is not None:
            return value
    return None


def _nested(raw: dict, outer: str, inner: str) -> int | None:
    details = raw.get(outer)
    return count(details.get(inner)) if isinstance(details, dict) else None


def read_usage(raw, flavor: str = "openai") -> tuple[Usage, int] | None:
    """(Usage, reasoning tokens) from an upstream's usage block, or None if unknown."""
    if not isinstance(raw, dict) or not raw:
        return None
    if flavor == "gemini":
        prompt = _first(raw, "promptTokenCount")
        tool = _first(raw, "toolUsePromptTokenCount") or 0
        cached = _first(raw, "cachedContentTokenCount") or 0
        output = _first(raw, "candidatesTokenCount")
        thoughts = _first(raw, "thoughtsTokenCount") or 0
        total = _first(raw, "totalTokenCount")
        if prompt is None and output is None and not thoughts:
            return (Usage(input_tokens=total, estimated=True), 0) if total else None
        prompt = (prompt or 0) + tool
        cached = min(cached, prompt)
        return Usage(input_tokens=prompt - cached, cached_input_tokens=cached,
                     output_tokens=(output or 0) + thoughts, reasoning_tokens=thoughts), thoughts
    prompt = _first(raw, "prompt_tokens", "input_tokens")
    output = _first(raw, "completion_tokens", "output_tokens")
    cache_read = _first(raw, "cache_read_input_tokens")
    cache_write = _first(raw, "cache_creation_input_tokens") or 0
    reasoning = _nested(raw, "completion_tokens_details", "reasoning_tokens") or \
        _nested(raw, "output_tokens_details", "reasoning_tokens") or 0
    if prompt is None and output is None and cache_read is None and not cache_write:
        total = _first(raw, "total_tokens")
        return (Usage(input_tokens=total, estimated=True), 0) if total else None
    prompt = prompt or 0
    if flavor == "anthropic" or cache_read is not None:
        # Anthropic's input_tokens leaves out cache reads and writes: each is its own count.
        return Usage(input_tokens=prompt, cached_input_tokens=cache_read or 0, cache_creation_tokens=cache_write,
                     output_tokens=output or 0, reasoning_tokens=reasoning), reasoning
    cached = _nested(raw, "prompt_tokens_details", "cached_tokens")
    if cached is None:
        cached = _nested(raw, "input_tokens_details", "cached_tokens") or 0
    cached = min(cached, prompt)
    return Usage(input_tokens=prompt - cached, cached_input_tokens=cached, output_tokens=output or 0,
                 reasoning_tokens=reasoning), reasoning
