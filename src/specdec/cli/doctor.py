"""`specdec doctor`: what this machine gives a model's step — kernels, numerics, bandwidth.

Loads the target as `generate` would, then prints how its linear layers run (prepacked for
oneDNN or F.linear, and why), whether every block width rounds alike (bit-identical rows,
so speculative greedy output equals plain greedy output), the machine's streaming bandwidth,
the one-token step as a fraction of the bandwidth limit, and v(k) for k = 1..16.
"""

from __future__ import annotations

import argparse
import sys

import torch

from specdec.cli.options import DTYPE_CHOICES, DTYPE_HELP, add_runtime_arguments, runtime_options
from specdec.models.registry import DEFAULT_TARGET


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specdec doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=DEFAULT_TARGET, help="registry name, directory or .gguf")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=7, help="timed forwards per width (median)")
    add_runtime_arguments(p)
    return p


def main(argv: list[str]) -> int:
    from specdec.bench.roofline import linear_lines, measure_roofline
    from specdec.machine import cpu_count
    from specdec.models.loading import load_model, set_threads
    from specdec.runtime.linear import cpu_supports_bfloat16
    from specdec.runtime.low_bit_choice import low_bit_verdict

    args = parser().parse_args(argv)
    runtime = runtime_options(args)
    set_threads(args.threads)
    # measured again (the doctor measures), before loading: --dtype auto follows it
    verdict = low_bit_verdict(refresh=True) if runtime.device.type == "cpu" else None
    model = load_model(args.target, dtype=None if args.dtype == "auto" else args.dtype,
                       threads=args.threads, **runtime.load_kwargs())
    if verdict is not None:
        print(verdict.line())
    print(f"torch {torch.__version__}, {cpu_count()} cores, {args.threads} threads, "
          f"native bf16: {cpu_supports_bfloat16()}")
    dtype = str(model.model.dtype).removeprefix("torch.")
    print(f"target {model.name} in {dtype} on {model.device}")
    for line in linear_lines(model):
        print(line)
    print("measuring (bandwidth, then forwards of 1..16 tokens) ...", file=sys.stderr,
          flush=True)
    for line in measure_roofline(model, repeats=args.repeats).lines():
        print(line)
    return 0
