"""Which output-limit parameter a physical model takes, and its own output cap.

Both are merchant-visible data on PhysicalModel (`output_limit_parameter`,
`max_output_tokens`); left empty, these defaults by upstream model name apply (Azure
deployment names are the merchant's own: set the fields when the name says nothing).

- OpenAI's reasoning models (o1, o3, o4-mini, gpt-5 and later) refuse `max_tokens` with a
  400 unsupported_parameter ("Use 'max_completion_tokens' instead"): they take
  `max_completion_tokens` (https://platform.openai.com/docs/api-reference/chat/create,
  max_tokens: "not compatible with o-series models"). Everything else OpenAI-format takes
  `max_tokens`. Anthropic and Gemini have one spelling each (their adapters write it:
  `max_tokens`, required; `generationConfig.maxOutputTokens`).
- The output cap sizes the hold of a call that names no limit (its worst case) and is
  Anthropic's required `max_tokens` then. Figures from the providers' model pages.
"""

from __future__ import annotations

import re

MAX_TOKENS = "max_tokens"
MAX_COMPLETION_TOKENS = "max_completion_tokens"
PARAMETERS = (MAX_TOKENS, MAX_COMPLETION_TOKENS)
OPENAI_FORMAT_KINDS = frozenset({"openai", "azure_openai", "openai_compatible"})

# o1, o1-mini, o3, o3-pro, o4-mini, gpt-5, gpt-5-mini, gpt-5.1 ... (an "openai/" style prefix allowed)
_REASONING = re.compile(r"^(?:.*/)?(?:o[1-9](?:$|[-.])|gpt-[5-9])", re.IGNORECASE)

# (prefix of the upstream name, output cap in tokens): the first match wins, longest first.
_CAPS = (
    ("gpt-5", 128_000), ("o1-mini", 65_536), ("o1", 100_000), ("o3", 100_000), ("o4", 100_000),
    ("gpt-4.1", 32_768), ("gpt-4o", 16_384), ("gpt-4-turbo", 4_096), ("gpt-3.5", 4_096),
    ("claude-opus-4", 32_000), ("claude-sonnet-4", 64_000), ("claude-3-7-sonnet", 64_000),
    ("claude-haiku-4", 64_000), ("claude-3-5", 8_192), ("claude-3", 4_096),
    ("gemini-2.5", 65_536), ("gemini-3", 65_536), ("gemini-2.0", 8_192), ("gemini-1.5", 8_192),
)
# A name we know nothing about: the hold covers this much output when the client names no
# limit (a model that writes more is charged at most what the balance pays, and logged).
FALLBACK_CAP = 32_768


def default_parameter(kind: str, upstream_model: str) -> str:
    if kind in OPENAI_FORMAT_KINDS and _REASONING.match(upstream_model or ""):
        return MAX_COMPLETION_TOKENS
    return MAX_TOKENS


def default_cap(upstream_model: str) -> int:
    name = (upstream_model or "").lower().rsplit("/", 1)[-1]
    for prefix, cap in _CAPS:
        if name.startswith(prefix):
            return cap
    return FALLBACK_CAP


def parameter(kind: str, upstream_model: str, configured: str) -> str:
    return configured if configured in PARAMETERS else default_parameter(kind, upstream_model)


def cap(upstream_model: str, configured: int | None) -> int:
    return configured if configured else default_cap(upstream_model)
