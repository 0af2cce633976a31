"""Importing this package registers every adapter in base.REGISTRY."""

import importlib

from gateway.adapters import azure, openai  # noqa: F401
from gateway.adapters.base import REGISTRY  # noqa: F401

for _name in ("anthropic", "gemini"):
    # These two land from another branch of work; the tree must run before they do.
    try:
        importlib.import_module(f"gateway.adapters.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"gateway.adapters.{_name}":
            raise
