"""Language models behind one small protocol: prefill, extend, rollback.

The names are imported on first use: `specdec.models.device` or `.registry` must not pull
transformers' modeling stack in (seconds of start-up a command that fails early never needs).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {"LanguageModel": "base", "check_same_vocabulary": "base", "HFCausalLM": "hf",
          "HFSeq2SeqLM": "hf", "load_model": "loading", "StaticCausalLM": "static",
          "wrap": "wrap"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'specdec.models' has no attribute {name!r}")
    return getattr(import_module(f"specdec.models.{_HOMES[name]}"), name)
