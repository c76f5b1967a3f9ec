"""Options shared by the commands: the model spec (--target, --draft, --gamma) and the runtime
(--device, --compile, --runtime)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from specdec.errors import UsageError
from specdec.language_model import RUNTIMES
from specdec.models.registry import DEFAULT_TARGET
from specdec.runtime.device import DEVICE_CHOICES, resolve_device

# prompt lookup costs ~nothing per draft, so any acceptance is profit (docs/drafters.md)
DEFAULT_DRAFTER = "ngram"
DEFAULT_GAMMA = "auto"


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how models run; `load_model(spec, **options.load_kwargs())`."""

    device: torch.device
    compile: bool
    runtime: str = "auto"

    def load_kwargs(self) -> dict:
        return {"device": self.device, "compile": self.compile, "runtime": self.runtime}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--target, --draft and --gamma (generate, chat and serve)."""
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="registry name, transformers directory or .gguf "
                        f"(default {DEFAULT_TARGET})")
    p.add_argument("--draft", default=DEFAULT_DRAFTER,
                   help="drafter: none | ngram | ngram:MIN:MAX | ngram:tree[:MIN:MAX] (trees) | "
                        "suffix[:global] (trees) | "
                        "unigram:FILE | bigram:FILE | "
                        "MODEL[@int8|@int4] | self[@int8|@int4][@vocab=N] | ngram+MODEL | "
                        f"ngram+self[@...] (default {DEFAULT_DRAFTER}; docs/drafters.md)")
    p.add_argument("--gamma", default=DEFAULT_GAMMA,
                   help=f"draft length per step: an integer or 'auto' (default {DEFAULT_GAMMA})")


DTYPE_CHOICES = ("auto", "gguf", "bfloat16", "float32", "float16")
DTYPE_HELP = ("weights: 'gguf' computes with a GGUF's own quantized blocks (the low-bit runner, "
              "CPU); default auto: that, for a GGUF of a llama-family model where this machine "
              "measured it faster (specdec doctor says), else bfloat16 where the device computes "
              "it natively, else float32 on a CPU, float16 on a GPU")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options naming the target, the drafter and how to load them (generate and chat; serve
    words --dtype and --threads for a server)."""
    add_model_arguments(p)
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, the physical cores, at most the "
                        "cores this process may use; a busy machine gets a warning)")
    add_runtime_arguments(p)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help=f"{DEVICE_CHOICES} (default auto: CUDA when available, else CPU)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compile", dest="compile", action="store_true", default=None,
                       help="compile the target's and model drafters' k-token steps "
                            "(torch.compile; CUDA graphs on a GPU). Default: on for CUDA, "
                            "off on the CPU (docs/runtime.md)")
    group.add_argument("--no-compile", dest="compile", action="store_false",
                       help="run every step eagerly")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="auto: static KV cache for llama-family models, transformers' "
                             "dynamic cache for the rest (default auto)")


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """Validated options from parsed arguments (a bad --device fails before any loading)."""
    device = resolve_device(args.device)
    compile = device.type == "cuda" if args.compile is None else bool(args.compile)
    if compile and args.runtime == "dynamic":
        raise UsageError("--compile needs the static runtime; drop --runtime dynamic")
    return RuntimeOptions(device, compile, args.runtime)
