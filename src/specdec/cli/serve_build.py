"""The server `specdec serve` runs: its models loaded, their Engine and its app; the same
in one process and in each Ray Serve replica."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from specdec.cli.loading import load_decoder, model_options
from specdec.cli.options import RuntimeOptions, runtime_options
from specdec.server.kv_budget import parse_budget


def build_server(args: argparse.Namespace, metrics: Any = None) -> tuple[Any, Any]:
    """Load the models `args` name; their Engine (with `metrics`, if given) and its app.

    The same for one process and for each Ray Serve replica.
    """
    import torch

    from specdec.runtime.linear import onednn_packing_available
    from specdec.runtime.low_bit_choice import low_bit_verdict
    from specdec.server import Engine, EngineConfig, create_app

    options = model_options(args)  # fail on a bad value before loading anything
    runtime, note = serve_runtime(runtime_options(args), args.max_batch_size)
    if note and args.compile:  # said only to who asked for --compile
        print(f"specdec serve: {note}", file=sys.stderr)
    dtype = serve_dtype(args.dtype, runtime.device.type, args.max_batch_size,
                        onednn_packing_available(torch.bfloat16, torch.device("cpu")),
                        runtime.device.type == "cpu" and low_bit_verdict().faster)
    decoder = load_decoder(dataclasses.replace(options, dtype=dtype), runtime)
    if runtime.compile:  # compile before the first request, not during it
        seconds = warm_up(decoder.target, decoder.drafter, args.max_tokens_limit)
        print(f"specdec serve: compiled steps in {seconds:.1f}s", file=sys.stderr)
    budget = parse_budget(args.kv_cache_memory)  # after loading: what the models left
    engine = Engine(decoder,
                    EngineConfig(max_queue=args.max_queue, max_batch_size=args.max_batch_size,
                                 max_tokens_limit=args.max_tokens_limit,
                                 kv_cache_bytes=budget, prefill_chunk=args.prefill_chunk),
                    metrics=metrics)
    app = create_app(engine, args.served_model_name or args.target, args.max_body_bytes,
                     api_key=args.api_key, public_metrics=args.public_metrics)
    return engine, app


def serve_dtype(dtype: str, device: str, max_batch_size: int,
                bf16_packing: str | None, low_bit_faster: bool = False) -> str | None:
    """The weights' dtype; None lets load_model choose (a GGUF's own blocks where they
    measured faster, else bfloat16 where the CPU has it).

    Without AMX, bf16 through F.linear re-lays its weights out on every call, a cost paid
    again for every row of a batch, so a batch costs nearly its rows' single steps; float32
    and prepacked bf16 weights are laid out once and a batch costs little more than a row.
    So a batching CPU server keeps bf16 where it can prepack it, float32 elsewhere.
    bf16_packing: why bf16 cannot be prepacked on the CPU it runs on (None: it can).
    """
    if dtype != "auto":
        return dtype
    if device != "cpu" or max_batch_size == 1 or low_bit_faster:
        return None
    return None if bf16_packing is None else "float32"


def serve_runtime(runtime: RuntimeOptions,
                  max_batch_size: int) -> tuple[RuntimeOptions, str | None]:
    """The runtime to load with, and why it differs from the one asked for (None: it does not).

    Compiled steps are single-row; batched rows run eagerly (docs/gpu.md). A batching server
    would compile widths it never calls and hold a single-row cache it never uses, so it
    compiles nothing."""
    if not runtime.compile or max_batch_size == 1:
        return runtime, None
    return dataclasses.replace(runtime, compile=False), \
        "--compile: batched rows run eagerly (compiled steps are single-row); " \
        "nothing is compiled unless --max-batch-size 1"


def warm_up(target: Any, drafter: Any, max_tokens: int) -> float:
    """Compile every width of the target and of a model drafter; returns the seconds taken.

    The cache is sized for a long request, so later requests rarely regrow it (which would
    recompile); compiled steps attend over the whole buffer, which a GPU does not notice.
    """
    window = target.max_length or max_tokens + 2048
    capacity = min(window, max_tokens + 2048)
    return target.warmup(capacity) + (drafter.warmup(capacity) if drafter is not None else 0.0)
