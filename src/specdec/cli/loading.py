"""One way from the model options to a decoder: generate, chat and serve all load through it.

The options are checked first (`model_options`), so a typo in --gamma, --draft or --threads
fails in a second, not after a download or a load of several gigabytes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from specdec.cli.options import RuntimeOptions
from specdec.control.policy import GammaPolicy
from specdec.drafters.factory import build_drafter, build_gamma, validate_spec
from specdec.errors import UsageError

if TYPE_CHECKING:  # the decoder pulls transformers in: imported when a model loads
    from specdec.decoding import SpeculativeDecoder

MAX_THREADS = 1024


@dataclass(frozen=True)
class ModelOptions:
    """--target, --draft, --gamma, --dtype and --threads, checked."""

    target: str
    draft: str
    gamma: int | Callable[[], GammaPolicy]
    dtype: str | None  # None: load_model's choice for the device
    threads: int | None  # None: torch's default within the CPU affinity (machine.py)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The model options of parsed arguments, checked before anything loads (UsageError)."""
    gamma = build_gamma(args.gamma)
    validate_spec(args.draft, "--draft")
    check_threads(args.threads)
    return ModelOptions(args.target, args.draft, gamma,
                        None if args.dtype == "auto" else args.dtype, args.threads)


def check_threads(threads: int | None) -> None:
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"--threads must be in [1, {MAX_THREADS}], got {threads}")


def load_decoder(options: ModelOptions, runtime: RuntimeOptions) -> SpeculativeDecoder:
    """The target and drafter `options` name, on `runtime`, ready to decode.

    torch's threads are set before loading, since packing weights uses them too; on a CPU a
    busy machine gets a warning naming the --threads to pass (machine.contention_warning)."""
    from specdec.decoding import SpeculativeDecoder
    from specdec.machine import contention_warning, default_threads
    from specdec.models.loading import load_model, set_threads

    # never the load average: the same command runs the same way whatever ran before it
    set_threads(options.threads if options.threads is not None
                else default_threads(torch.get_num_threads()))
    warning = contention_warning(torch.get_num_threads()) if runtime.device.type == "cpu" \
        else None
    if warning:
        print(f"specdec: {warning}", file=sys.stderr)

    def loader(spec: str) -> Any:
        print(f"specdec: loading {spec} ({options.dtype or 'auto'}, {runtime.device}) ...",
              file=sys.stderr, flush=True)
        return load_model(spec, dtype=options.dtype, **runtime.load_kwargs())

    target = loader(options.target)
    return SpeculativeDecoder(target, build_drafter(options.draft, target, loader),
                              options.gamma)
