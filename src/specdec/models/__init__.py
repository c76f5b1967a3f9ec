"""Language models behind one small protocol: prefill, extend, rollback.

The names are imported on first use: `specdec.models.device` or `.registry` must not pull
transformers' modeling stack in (seconds of start-up a command that fails early never needs).
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import Any

_HOMES = {"LanguageModel": "base", "check_same_vocabulary": "base", "HFCausalLM": "hf",
          "HFSeq2SeqLM": "hf", "load_model": "loading", "StaticCausalLM": "static"}

__all__ = sorted([*_HOMES, "wrap"])


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'specdec.models' has no attribute {name!r}")
    return getattr(import_module(f"specdec.models.{_HOMES[name]}"), name)


class _Package(ModuleType):
    """`specdec.models.wrap` names the function, as it did when this file imported it eagerly.

    The submodule of the same name would otherwise replace it: the import system binds a
    package's attribute to each submodule it loads. The setter keeps the function.
    """

    @property
    def wrap(self) -> Any:
        return import_module("specdec.models.wrap").wrap

    @wrap.setter
    def wrap(self, module: ModuleType) -> None:
        pass  # the submodule stays reachable as sys.modules["specdec.models.wrap"]


sys.modules[__name__].__class__ = _Package
