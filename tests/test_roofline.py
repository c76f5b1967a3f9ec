"""The bandwidth probe's arithmetic: bytes a step reads, limit, fraction, v(k)."""

from torch import nn

from specdec.bench.roofline import Roofline, step_times, weight_bytes
from specdec.models import wrap
from specdec.runtime.linear import PackedLinear, StackedSlice
from specdec.runtime.quantize import Int8Linear
from tiny import tiny_llama


def test_weight_bytes_counts_each_stacked_product_once():
    layers = [nn.Linear(32, 16), nn.Linear(32, 8)]
    stacked = PackedLinear.stack(layers)
    slices = [StackedSlice(stacked, 0), StackedSlice(stacked, 1)]
    assert weight_bytes(slices) == 32 * 24 * 4
    plain = nn.Linear(64, 10)
    int8 = Int8Linear(nn.Linear(64, 10))
    assert weight_bytes([plain]) == 640 * 4
    assert weight_bytes([int8]) == 640 + 10 * 4  # int8 weights and float32 scales


def test_roofline_fraction_and_v():
    roofline = Roofline(bandwidth_gbs=10.0, weight_bytes=10**8, step_ms={1: 20.0, 4: 25.0})
    assert roofline.limit_ms == 10.0
    assert roofline.fraction == 0.5
    assert roofline.v(4) == 1.25
    assert "50% of the bandwidth limit" in "\n".join(roofline.lines())


def test_step_times_leave_the_cache_as_it_was():
    runner = wrap(tiny_llama(64, seed=0))
    times = step_times(runner, widths=(1, 3), context=20, repeats=2)
    assert set(times) == {1, 3} and all(t > 0 for t in times.values())
    assert runner.cached_length == 20  # every timed block rolled back
