"""How fast each linear kernel streams weights on this CPU, against a plain sum, ONE run.

    python benchmarks/linear_kernels.py [--threads 2] [--rows 1,2,4,8,16]

12 gate/up-shaped layers (9,728 x 896, Qwen2.5-0.5B's stacked MLP input, 209 MB in bf16:
beyond the caches): F.linear in bf16, oneDNN-prepacked bf16 and float32 (what the static
runner uses), and torch's int4 CPU kernel (groups of 32), at each row count; GB/s counts the
kernel's own weight bytes, and "bf16-equivalent" the bytes a bf16 copy would be.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specdec.bench.roofline import stream_bandwidth
from specdec.runtime.quantize import int4_quantize

SHAPE, LAYERS = (9728, 896), 12


def median_s(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,2,4,8,16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    out, inp = SHAPE
    weights = [torch.randn(SHAPE) * 0.02 for _ in range(LAYERS)]
    bf16 = [w.to(torch.bfloat16) for w in weights]
    packed = {dtype: [torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), None)
                      for w in weights] for dtype in (torch.bfloat16, torch.float32)}
    int4 = []
    for w in weights:
        q, scale, low = int4_quantize(w, 32)
        int4.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).reshape(out, -1), 1),
            torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous()
            .to(torch.bfloat16)))
    bf16_bytes = out * inp * 2 * LAYERS
    print(f"sum over 1 GB: {stream_bandwidth():.1f} GB/s ({args.threads} threads)")
    print("| kernel | rows | ms | GB/s of its weights | bf16-equivalent GB/s |")
    print("|---|---|---|---|---|")
    for m in rows:
        x = torch.randn(m, inp)
        xb = x.to(torch.bfloat16)
        kernels = {
            "F.linear bf16": (lambda x=xb: [
                torch.nn.functional.linear(x, w) for w in bf16], 2),
            "prepacked bf16": (lambda x=xb: [
                torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
                for w in packed[torch.bfloat16]], 2),
            "prepacked float32": (lambda x=x: [
                torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
                for w in packed[torch.float32]], 4),
            "int4 g32 (bf16 activations)": (lambda x=xb: [
                torch.ops.aten._weight_int4pack_mm_for_cpu(x, w, 32, s) for w, s in int4],
                0.5 + 4 / 32),
        }
        for name, (fn, bytes_per_weight) in kernels.items():
            seconds = median_s(fn)
            own = out * inp * bytes_per_weight * LAYERS
            print(f"| {name} | {m} | {seconds * 1e3:.2f} | {own / seconds / 1e9:.1f} | "
                  f"{bf16_bytes / seconds / 1e9:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
