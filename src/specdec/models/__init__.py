"""Getting models: the offline registry, fetching, converted copies, `load_model`.

Running them is `specdec.runtime`; the protocol both share is `specdec.language_model`. The
public entry points (`load_model`, `wrap`, the runners) are named here too, imported on first
use: `specdec.models.registry` must not pull transformers' modeling stack in (seconds of
start-up a command that fails early never needs).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {"LanguageModel": "specdec.language_model",
          "check_same_vocabulary": "specdec.language_model", "HFCausalLM": "specdec.runtime.hf",
          "HFSeq2SeqLM": "specdec.runtime.hf", "load_model": "specdec.models.loading",
          "StaticCausalLM": "specdec.runtime.static", "wrap": "specdec.runtime.wrap"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'specdec.models' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
