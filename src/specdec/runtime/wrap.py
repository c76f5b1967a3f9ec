"""wrap: the right runner for a transformers model (static where it can, dynamic elsewhere)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from specdec.errors import UsageError
from specdec.language_model import RUNTIMES
from specdec.runtime.hf import HFCausalLM, HFSeq2SeqLM
from specdec.runtime.static import DEFAULT_WIDTHS, StaticCausalLM, static_unsupported

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def wrap(model: PreTrainedModel, tokenizer: Any = None, name: str | None = None, *,
         runtime: str = "auto", compile: bool = False, device: str | torch.device | None = None,
         widths: tuple[int, ...] = DEFAULT_WIDTHS, pack: bool = True) -> Any:
    """A LanguageModel for `model`, moved to `device` when given.

    runtime 'auto' takes the static runner (preallocated KV cache, optional compiled steps)
    for llama-family decoders and transformers' dynamic cache for everything else; 'static'
    refuses a model it cannot run; 'dynamic' always takes transformers' own forward.
    pack: the static runner packs the linear layers for oneDNN where the CPU has it
    (runtime/packing.py; in place: the dense weights are freed), False keeps `F.linear`.
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if device is not None:
        model = model.to(device)
    if model.config.is_encoder_decoder:
        runner: Any = HFSeq2SeqLM(model, tokenizer, name)
    elif runtime == "dynamic" or (runtime == "auto" and static_unsupported(model)):
        runner = HFCausalLM(model, tokenizer, name)
    else:
        return StaticCausalLM(model, tokenizer, name, compile=compile, widths=widths,
                              pack=pack)
    if runtime == "static":
        raise UsageError(f"the static runner cannot run {runner.name}: "
                         f"{static_unsupported(model)}")
    if compile:
        warnings.warn(f"{runner.name} runs uncompiled: compiled steps need the static runner, "
                      f"which does not run {static_unsupported(model)}", RuntimeWarning,
                      stacklevel=2)
    return runner
