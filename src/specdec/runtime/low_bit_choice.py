"""Whether the low-bit runner is the faster one here: a short calibration, cached per machine.

Which kernel wins depends on the CPU (which instructions it has, how fast oneDNN's bf16
one-row product streams), so the default is measured where it runs, never assumed: 8 layers
of an MLP-sized product (gate and up stacked, 9,728 x 896) at 1 and 8 rows, the low-bit
product against the prepacked bf16 one (float32 F.linear where bf16 cannot be prepacked),
interleaved, medians. About a second; the verdict is kept under the cache directory, keyed
by the CPU, torch and the kernel, so later commands read it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from specdec.cache import cache_dir
from specdec.runtime.group_linear import GroupLinear
from specdec.runtime.group_weights import GroupQuantized
from specdec.runtime.kernels import build_directory, kernel_path
from specdec.runtime.linear import PackedLinear, onednn_packing_available

SHAPE = (9728, 896)  # gate and up of a 0.5B llama-family model, stacked
LAYERS = 8  # enough bytes (70 MB in bf16) to stream past the caches
ROWS = (1, 8)
REPEATS = 5


@dataclass(frozen=True)
class LowBitVerdict:
    """Milliseconds per call of both products at 1 and 8 rows, and which kernel ran."""

    low_bit_ms: tuple[float, ...]
    dense_ms: tuple[float, ...]
    dense: str  # "bfloat16 prepacked" or "float32 F.linear"
    kernel_path: str

    @property
    def faster(self) -> bool:
        """The low-bit product is faster at every measured row count."""
        return all(low < dense for low, dense in zip(self.low_bit_ms, self.dense_ms,
                                                      strict=True))

    def line(self) -> str:
        rows = ", ".join(f"{r} row{'s' * (r > 1)} {low:.1f} vs {dense:.1f} ms"
                         for r, low, dense in zip(ROWS, self.low_bit_ms, self.dense_ms,
                                                  strict=True))
        verdict = "faster: the default for GGUF models" if self.faster else \
            "not faster: GGUF models load dequantized by default"
        return (f"low-bit products ({self.kernel_path}) vs {self.dense} on {LAYERS} MLP "
                f"layers: {rows}; {verdict}")


def low_bit_verdict(refresh: bool = False) -> LowBitVerdict:
    """This machine's verdict: read from the cache, else measured (about a second) and kept."""
    path = _verdict_path()
    if not refresh:
        try:
            return LowBitVerdict(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in json.loads(path.read_text()).items()})
        except (OSError, ValueError, TypeError):
            pass
    verdict = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(asdict(verdict)))
    temp.replace(path)
    return verdict


@torch.inference_mode()
def measure() -> LowBitVerdict:
    generator = torch.Generator().manual_seed(0)
    out, inputs = SHAPE
    weights = [torch.randn(out, inputs, generator=generator) * 0.02 for _ in range(LAYERS)]
    low = [GroupLinear([GroupQuantized.from_float(w)]) for w in weights]
    if onednn_packing_available(torch.bfloat16, torch.device("cpu")) is None:
        dense_name, dense = "bfloat16 prepacked", [PackedLinear(w.bfloat16(), None)
                                                   for w in weights]
    else:
        dense_name = "float32 F.linear"
        dense = [torch.nn.Linear(inputs, out, bias=False) for _ in weights]
        for layer, w in zip(dense, weights, strict=True):
            layer.weight.data = w
    del weights
    times: dict[tuple[str, int], list[float]] = {}
    x = torch.randn(max(ROWS), inputs, generator=generator)
    for _ in range(REPEATS + 1):  # the first round warms up and is dropped
        for rows in ROWS:
            for name, layers in (("low", low), ("dense", dense)):
                start = time.perf_counter()
                for layer in layers:
                    layer(x[:rows])
                times.setdefault((name, rows), []).append(time.perf_counter() - start)
    median = {key: 1e3 * statistics.median(t[1:]) for key, t in times.items()}
    return LowBitVerdict(tuple(median["low", r] for r in ROWS),
                         tuple(median["dense", r] for r in ROWS), dense_name,
                         low[0].kernel_path)


def _verdict_path() -> Path:
    """One file per CPU model and flags, torch version, thread count, kernel build and the
    path it runs (SPECDEC_KERNEL_PATH can force a slower one)."""
    key = "|".join([_cpu_identity(), torch.__version__, str(torch.get_num_threads()),
                    build_directory().name, kernel_path()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "calibration" / f"low_bit.{digest}.json"


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return f"{fields.get('model name', '')}|{fields.get('flags', '')}"
