"""Runtime options shared by `generate`, `serve` and `bench`: --device, --compile, --runtime."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from specdec.errors import UsageError
from specdec.models.base import RUNTIMES
from specdec.models.device import DEVICE_CHOICES, resolve_device


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how models run; `load_model(spec, **options.load_kwargs())`."""

    device: torch.device
    compile: bool
    runtime: str = "auto"

    def load_kwargs(self) -> dict:
        return {"device": self.device, "compile": self.compile, "runtime": self.runtime}


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help=f"{DEVICE_CHOICES} (default auto: CUDA when available, else CPU)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compile", dest="compile", action="store_true", default=None,
                       help="compile the target's and model drafters' k-token steps "
                            "(torch.compile; CUDA graphs on a GPU). Default: on for CUDA, "
                            "off on the CPU (README: measured)")
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
