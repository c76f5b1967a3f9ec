"""How far a model's step is from this machine's memory-bandwidth limit, and what k tokens cost.

A one-token step of a small model on the CPU must read every weight once: its floor is the
bytes of the weights over the machine's streaming bandwidth. `measure_roofline` measures both
here (the bandwidth by summing a buffer larger than the caches) and the step itself for block
widths 1..16, so a report says how close the runner is and what v(k) = time(k) / time(1) is.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from specdec.runtime.group_linear import GroupLinear
from specdec.runtime.linear import PackedLinear, StackedSlice
from specdec.runtime.quantize import Int4Linear, Int8Linear

STREAM_BYTES = 1 << 30  # larger than any CPU cache here
WIDTHS = tuple(range(1, 17))


@dataclass
class Roofline:
    bandwidth_gbs: float  # streaming read bandwidth measured here
    weight_bytes: int  # bytes a one-token step reads (linear layers and output head)
    step_ms: dict[int, float] = field(default_factory=dict)  # median step time per width
    threads: int = 1

    @property
    def limit_ms(self) -> float:
        return self.weight_bytes / (self.bandwidth_gbs * 1e9) * 1e3

    @property
    def fraction(self) -> float:
        """limit / one-token step: 1.0 is the bandwidth limit."""
        return self.limit_ms / self.step_ms[1] if self.step_ms.get(1) else 0.0

    def v(self, k: int) -> float:
        return self.step_ms[k] / self.step_ms[1]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "limit_ms": self.limit_ms, "fraction_of_limit": self.fraction,
                "v": {k: self.v(k) for k in self.step_ms}, "lines": self.lines()}

    def lines(self) -> list[str]:
        vs = ", ".join(f"{k}: {self.v(k):.2f}" for k in sorted(self.step_ms) if k > 1)
        return [f"streaming bandwidth {self.bandwidth_gbs:.1f} GB/s ({self.threads} threads); "
                f"a step reads {self.weight_bytes / 1e9:.3f} GB of weights: limit "
                f"{self.limit_ms:.1f} ms",
                f"one-token step {self.step_ms[1]:.1f} ms = {100 * self.fraction:.0f}% of the "
                "bandwidth limit",
                f"v(k) = time of a k-token forward / one-token forward: {vs}"]


def stream_bandwidth(repeats: int = 5, size: int = STREAM_BYTES) -> float:
    """GB/s of a sum over `size` bytes of float32 (median of `repeats`), torch's threads."""
    buffer = torch.ones(size // 4, dtype=torch.float32)
    buffer.sum()  # touch every page first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        times.append(time.perf_counter() - start)
    return size / statistics.median(times) / 1e9


def weight_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the linear layers among `modules` (packed, plain, group-quantized, int8 or
    int4; a stacked product counted once), what a one-token step streams."""
    total, seen = 0, set()
    for module in modules:
        if isinstance(module, StackedSlice):
            module = module.stacked
        if id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(module, PackedLinear):
            total += module.in_features * module.out_features * module.dtype.itemsize
        elif isinstance(module, GroupLinear):
            total += module.bytes
        elif isinstance(module, Int8Linear | Int4Linear):
            total += sum(b.numel() * b.element_size() for b in module.buffers())
        elif type(module) is nn.Linear:
            total += module.weight.numel() * module.weight.element_size()
    return total


def step_times(model: Any, widths: Iterable[int] = WIDTHS, context: int = 128,
               repeats: int = 7) -> dict[int, float]:
    """Median ms of a k-token extend at a `context`-token prefix, per width (rolled back)."""
    generator = torch.Generator().manual_seed(0)
    vocab = min(int(model.vocab_size), 32_000)
    prompt = torch.randint(0, vocab, (1, context + 1), generator=generator)
    tokens = torch.randint(0, vocab, (1, max(widths)), generator=generator)
    model.prefill(prompt, reserve=64)
    for k in (1, max(widths)):  # warm-up
        model.extend(tokens[:, :k])
        model.rollback(k)
    times: dict[int, list[float]] = {k: [] for k in widths}
    for _ in range(repeats):  # widths interleaved: a drift of the machine hits every width
        for k in times:
            start = time.perf_counter()
            model.extend(tokens[:, :k])
            times[k].append(time.perf_counter() - start)
            model.rollback(k)
    return {k: 1e3 * statistics.median(t) for k, t in times.items()}


def measure_roofline(model: Any, widths: Iterable[int] = WIDTHS, repeats: int = 7) -> Roofline:
    """Bandwidth, weight bytes and step times of `model` (a runner over a torch module)."""
    return Roofline(bandwidth_gbs=stream_bandwidth(),
                    weight_bytes=weight_bytes(model.model.modules()),
                    step_ms=step_times(model, widths, repeats=repeats),
                    threads=torch.get_num_threads())


def linear_lines(target: Any) -> list[str]:
    """How the target's linear layers compute, in words: the GGUF's own blocks (with the
    kernel path), or the packing report."""
    products = [m for m in target.model.modules() if isinstance(m, GroupLinear)] \
        if isinstance(getattr(target, "model", None), nn.Module) else []
    if products:
        paths = sorted({m.kernel_path for m in products})
        return [f"linear layers: the GGUF's own blocks, {len(products)} low-bit products "
                f"(kernel path {', '.join(paths)}; rows bit-identical at every width)"]
    return packing_lines(getattr(target, "packing", None))


def packing_lines(report: Any) -> list[str]:
    """The runner's packing report in words."""
    if report is None:
        return ["linear layers: transformers' own (this runner does not pack)"]
    if report.skipped:
        return [f"linear layers: F.linear ({report.skipped})"]
    lines = [f"linear layers: {report.packed} prepacked for oneDNN (q/k/v and gate/up stacked)"]
    padded = ", ".join(f"{i}->{o}" for i, o in report.padded_shapes)
    if padded:
        lines.append(f"single rows padded to two (one row rounds apart here): {padded}")
    lines.append("block widths round alike (rows bit-identical for 1..16 rows): "
                 + ("yes" if report.row_invariant else
                    "NO - products of some row counts round differently on this machine; "
                    "greedy speculative output may differ from plain at near-ties"))
    return lines
