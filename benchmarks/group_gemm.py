"""The low-bit product kernel (GroupLinear) against prepacked bf16, ONE run.

    flock /tmp/timing.lock python benchmarks/group_gemm.py [--threads 2] [--rows 1,2,4,8,16]

Qwen2.5-0.5B's linear shapes, 24 distinct layers each (beyond the caches; the head once), with
random weights in each GGUF source's representation: qkv / o / gate+up as Q5_0 (group 32,
float16 scales), down as Q6_K (group 16, float32 scales) and as Q4_K (group 32, minimums), the
head as Q8_0. For each shape and row count: ms per call over all its layers (the fastest of
the repeats, every variant taking turns; medians in the .json) and the GB/s of the bytes read,
for the kernel (`--paths`, default the fastest this CPU has) and for bf16
prepacked by oneDNN (mkldnn _reorder_linear_weight + _linear_pointwise). The streaming rate
(a sum over 1 GB) is the reference. Writes benchmarks/low_bit/group_gemm.{md,json}.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from specdec.bench.roofline import stream_bandwidth
from specdec.runtime.group_linear import GroupLinear
from specdec.runtime.group_weights import GroupQuantized

OUT = Path(__file__).parent / "low_bit"
LAYERS = 24


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    k: int
    group: int
    fp16_scales: bool
    mins: bool
    layers: int = LAYERS


SHAPES = (
    Shape("qkv (Q5_0)", 1152, 896, 32, True, False),
    Shape("o (Q5_0)", 896, 896, 32, True, False),
    Shape("gate+up (Q5_0)", 9728, 896, 32, True, False),
    Shape("down (Q6_K: g16, fp32 scales)", 896, 4864, 16, False, False),
    Shape("down (Q4_K: g32, mins)", 896, 4864, 32, False, True),
    Shape("head (Q8_0)", 151936, 896, 32, True, False, layers=1),
)


def random_weight(shape: Shape, seed: int) -> GroupQuantized:
    generator = torch.Generator().manual_seed(seed)
    low, high = (0, 16) if shape.mins else (-32, 32)
    values = torch.randint(low, high, (shape.n, shape.k), dtype=torch.int8, generator=generator)
    scales = torch.rand(shape.n, shape.k // shape.group, generator=generator) * 1e-2
    scales = scales.half().float() if shape.fp16_scales else scales + 1e-9
    mins = torch.rand_like(scales) * 1e-2 if shape.mins else None
    return GroupQuantized(values, scales, mins, shape.group)


def interleaved_ms(fns: dict, repeats: int) -> dict[str, list[float]]:
    """ms of each call set, the sets taking turns so that all see the same moments of a
    shared host."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def bf16_layers(shape: Shape) -> list[torch.Tensor]:
    """The same shapes in bf16, prepacked by oneDNN once (as the static runner's layers)."""
    layers = []
    for seed in range(shape.layers):
        weight = torch.randn(shape.n, shape.k, generator=torch.Generator().manual_seed(seed))
        layers.append(torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16), None))
    return layers


def run_bf16(layers: list[torch.Tensor], x: torch.Tensor) -> None:
    for packed in layers:
        torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def run_kernel(modules: list[GroupLinear], x: torch.Tensor) -> None:
    for module in modules:
        module(x)


def measure(shape: Shape, rows: list[int], paths: list[str], repeats: int) -> dict:
    result: dict = {"shape": shape.name, "n": shape.n, "k": shape.k, "layers": shape.layers}
    weights = [random_weight(shape, seed) for seed in range(shape.layers)]
    modules = {path: [GroupLinear(w, path=path) for w in weights] for path in paths}
    del weights
    result["bytes"] = sum(m.bytes for m in modules[paths[0]])
    result["bf16_bytes"] = 2 * shape.n * shape.k * shape.layers
    layers = bf16_layers(shape)
    for r in rows:
        x = torch.randn(r, shape.k)
        fns = {path: functools.partial(run_kernel, modules[path], x) for path in paths}
        fns["bf16"] = functools.partial(run_bf16, layers, x.to(torch.bfloat16))
        for name, times in interleaved_ms(fns, repeats).items():
            result[f"{name}_ms_{r}"] = min(times)
            result[f"{name}_median_ms_{r}"] = statistics.median(times)
    return result


def report(results: list[dict], rows: list[int], paths: list[str], stream: float,
           threads: int, rounds: int) -> str:
    lines = [
        "# The low-bit product kernel against prepacked bf16",
        "",
        f"`flock /tmp/timing.lock python benchmarks/group_gemm.py --rounds {rounds} "
        f"--paths {','.join(paths)}` — "
        f"{threads} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Streaming (sum over 1 GB): "
        f"**{stream:.1f} GB/s** (the best of {rounds}). ms per call over all of a shape's "
        f"layers: the fastest of the repeats and of {rounds} round(s), the variants taking "
        "turns (the lowest round median in the .json); GB/s = bytes read / time. "
        "Indicative only: the host is shared.",
        "",
    ]
    by_name = {res["shape"]: res for res in results}
    if len(by_name) == len(SHAPES):  # the default GGUF's mix: half the down layers each K type
        total = sum(res["bytes"] * (0.5 if res["shape"].startswith("down") else 1.0)
                    for res in results)
        lines += [f"Qwen2.5-0.5B's linear layers and head in this layout (qkv/o/gate+up Q5_0, "
                  f"down 12 x Q6_K + 12 x Q4_K, head Q8_0): **{total / 1e9:.3f} GB** per "
                  "one-row step.", ""]
    header = "| shape | path | B/weight | " + " | ".join(f"{r} row{'s' * (r > 1)}" for r in rows)
    lines += [header + " |", "|" + "---|" * (3 + len(rows))]
    for res in results:
        for path in [*paths, "bf16"]:
            size = res["bf16_bytes"] if path == "bf16" else res["bytes"]
            per_weight = size / (res["n"] * res["k"] * res["layers"])
            times = [res[f"{path}_ms_{r}"] for r in rows]
            cells = [f"{ms:.2f} ms ({size / ms / 1e6:.0f} GB/s)" for ms in times]
            lines.append(f"| {res['shape']} ×{res['layers']} | {path} | {per_weight:.3f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--paths", default="", help="kernel paths to time (default: auto)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every shape this many times, spread over the run, and "
                             "keep each cell's fastest (a shared host's busy spells pass)")
    parser.add_argument("--shapes", default="", help="substring filter on shape names")
    parser.add_argument("--out", default=str(OUT / "group_gemm"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    probe = GroupLinear(random_weight(SHAPES[0], 0))
    paths = args.paths.split(",") if args.paths else [probe.kernel_path]
    streams = []
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        streams.append(stream_bandwidth())
        for shape in SHAPES:
            if args.shapes and args.shapes not in shape.name:
                continue
            result = measure(shape, rows, paths, args.repeats)
            print(json.dumps(result), flush=True)
            kept = best.setdefault(shape.name, result)
            for key, value in result.items():
                if "_ms_" in key:
                    kept[key] = min(kept[key], value)
    results, stream = list(best.values()), max(streams)
    text = report(results, rows, paths, stream, args.threads, args.rounds)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(
        {"threads": args.threads, "stream_gbps": streams, "rows": rows, "paths": paths,
         "rounds": args.rounds,
         "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
