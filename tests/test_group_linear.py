"""The low-bit product (GroupLinear): every compiled path this CPU has, and the torch fallback."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from specdec.runtime import group_fallback, kernels
from specdec.runtime.group_linear import GroupLinear
from specdec.runtime.group_pack import TILE
from specdec.runtime.group_weights import GroupQuantized


def available_paths() -> list[str]:
    paths = [kernels.FALLBACK]
    if kernels.load_kernels().available:
        for path in kernels.PATHS:
            with contextlib.suppress(ValueError):  # this CPU lacks it
                paths.append(kernels.kernel_path(path))
    return paths


PATHS = available_paths()


def weight(n: int, k: int, group: int, *, mins: bool = False, fp16: bool = True,
           seed: int = 0) -> GroupQuantized:
    """Random GroupQuantized: full int8 range, or 0..15 with minimums (as Q4_K)."""
    gen = torch.Generator().manual_seed(seed)
    low, high = (0, 16) if mins else (-128, 128)
    values = torch.randint(low, high, (n, k), dtype=torch.int8, generator=gen)
    scales = torch.rand(n, k // group, generator=gen) * 0.01 + 1e-4
    scales = scales.half().float() if fp16 else scales
    assert fp16 or not torch.equal(scales.half().float(), scales)  # really float32 scales
    minimums = torch.rand(n, k // group, generator=gen) * 0.1 if mins else None
    return GroupQuantized(values, scales, minimums, group)


CASES = {  # odd N throughout: not a multiple of the 16-output tile
    "g32-fp16": dict(n=37, k=96, group=32),
    "g16-fp32": dict(n=50, k=64, group=16, fp16=False),
    "g32-mins": dict(n=33, k=128, group=32, mins=True, fp16=False),
    "g16-mins-fp16": dict(n=21, k=64, group=16, mins=True),
}


def make(case: str, seed: int = 0) -> GroupQuantized:
    spec = dict(CASES[case])
    return weight(spec.pop("n"), spec.pop("k"), spec.pop("group"), seed=seed, **spec)


def reference(x: torch.Tensor, w: GroupQuantized) -> tuple[np.ndarray, np.ndarray]:
    """float64 product of the dequantized weight with each row's quantized activations (per 32
    inputs, scale max|x| / 127 in float32, round to nearest even), and the sum of |terms| per
    output (what bounds the float32 rounding)."""
    xb = x.numpy().astype(np.float32).reshape(x.shape[0], -1, 32)
    d = np.abs(xb).max(axis=-1) / np.float32(127)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint(xb * inv[..., None]), -127, 127).reshape(x.shape[0], -1)
    deq = np.repeat(d.astype(np.float64), 32, axis=1) * q  # [R, K]
    g = w.group
    values, scales = w.values.numpy().astype(np.float64), w.scales.numpy().astype(np.float64)
    groups = values.shape[1] // g
    terms = np.einsum("rgk,ngk->rng", deq.reshape(-1, groups, g),
                      values.reshape(-1, groups, g)) * scales[None]
    if w.mins is not None:
        terms -= deq.reshape(-1, groups, g).sum(-1)[:, None, :] * w.mins.numpy()[None]
    return terms.sum(-1), np.abs(terms).sum(-1)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
def test_matches_float64_reference(path: str, case: str) -> None:
    w = make(case)
    x = torch.randn(5, w.shape[1], generator=torch.Generator().manual_seed(1))
    x[2, :32] = 0.0  # an all-zero activation block (scale 0)
    y = GroupLinear(w, path=path)(x)
    assert y.dtype == torch.float32 and y.shape == (5, w.shape[0])
    ref, magnitude = reference(x, w)
    groups = w.shape[1] // w.group
    # each group costs one rounding of scale_w * scale_x and one (or two) fma roundings
    bound = (3 * groups + 2) * 2.0**-24 * magnitude
    error = np.abs(y.double().numpy() - ref)
    assert (error <= bound).all(), float((error / bound).max())
    # and the quantized product is far from the unquantized one only by the quantization
    assert not np.allclose(ref, (x.double() @ w.dequantize().double().T).numpy(), rtol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_exact_where_nothing_rounds(path: str) -> None:
    """Integer activations whose every block holds 127, power-of-two scales: the product is an
    exact integer sum, so every path gives it exactly."""
    n, k = 19, 64
    gen = torch.Generator().manual_seed(2)
    values = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    scales = 2.0 ** torch.randint(-6, 2, (n, k // 32), generator=gen).float()
    x = torch.randint(-127, 128, (3, k), generator=gen).float()
    x[:, ::32] = 127.0
    w = GroupQuantized(values, scales, None, 32)
    exact = x.double() @ w.dequantize().double().T
    assert torch.equal(GroupLinear(w, path=path)(x).double(), exact)


@pytest.mark.parametrize("case", ["g32-mins", "g16-fp32"])
@pytest.mark.parametrize("path", PATHS)
def test_rows_bit_identical_to_row_alone(path: str, case: str) -> None:
    w = make(case)
    x = torch.randn(70, w.shape[1], generator=torch.Generator().manual_seed(3)) * 3
    layer = GroupLinear(w, path=path)
    full = layer(x)  # 70 rows: more than the kernel's 64-row accumulator block
    for r in range(1, 17):
        assert torch.equal(layer(x[:r]), full[:r]), r
    for r in range(70):
        assert torch.equal(layer(x[r:r + 1]), full[r:r + 1]), r


@pytest.mark.parametrize("case", CASES)
def test_every_path_gives_the_same_bits(case: str) -> None:
    w = make(case, seed=4)
    x = torch.randn(9, w.shape[1], generator=torch.Generator().manual_seed(5)) * 10
    results = {path: GroupLinear(w, path=path)(x) for path in PATHS}
    first = results[PATHS[0]]
    for path, y in results.items():
        assert torch.equal(y, first), path


@pytest.mark.parametrize("path", PATHS)
def test_stacked_parts_equal_separate_products(path: str) -> None:
    parts = [weight(n, 96, 32, mins=mins, fp16=False, seed=seed)
             for seed, (n, mins) in enumerate([(37, False), (16, True), (5, False)])]
    stacked = GroupLinear(parts, path=path)
    assert stacked.splits == (37, 16, 5) and stacked.out_features == 58
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(6))
    outs = stacked.parts(x)
    assert len(outs) == 3
    for part, out in zip(parts, outs, strict=True):
        assert torch.equal(out, GroupLinear(part, path=path)(x))


@pytest.mark.parametrize("path", PATHS)
def test_threads_do_not_change_the_result(path: str) -> None:
    w = weight(40 * TILE + 3, 128, 32, seed=7)
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(8))
    layer = GroupLinear(w, path=path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(2)
        two = layer(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_shapes_dtypes_and_attributes() -> None:
    w = make("g32-fp16")
    layer = GroupLinear(w)
    assert (layer.in_features, layer.out_features, layer.splits) == (96, 37, (37,))
    x = torch.randn(2, 3, 96, generator=torch.Generator().manual_seed(9))
    y = layer(x.to(torch.bfloat16))
    assert y.dtype == torch.float32 and y.shape == (2, 3, 37)
    assert torch.equal(y, layer(x.to(torch.bfloat16).float().reshape(6, 96)).view(2, 3, 37))
    columns = torch.randn(96, 4, generator=torch.Generator().manual_seed(11))
    assert not columns.T.is_contiguous()
    assert torch.equal(layer(columns.T), layer(columns.T.contiguous()))
    for path in PATHS:
        assert GroupLinear(w, path=path)(torch.empty(0, 96)).shape == (0, 37)
    if layer.kernel_path != kernels.FALLBACK:
        # 48 padded outputs x 96 inputs: one byte each plus a float16 scale per 32
        assert layer.bytes == 48 * 96 + 48 * 3 * 2
        assert GroupLinear(make("g32-mins")).bytes == 48 * 128 + 48 * 4 * (4 + 4)


def test_bad_paths_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown kernel path"):
        GroupLinear(make("g32-fp16"), path="sse9")
    with pytest.raises(ValueError, match="multiple of 32"):
        GroupLinear(weight(4, 48, 16))


def test_env_var_forces_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.PATH_ENV, PATHS[-1])
    assert GroupLinear(make("g32-fp16")).kernel_path == PATHS[-1]
    monkeypatch.setenv(kernels.PATH_ENV, kernels.FALLBACK)
    assert GroupLinear(make("g32-fp16")).kernel_path == kernels.FALLBACK


def test_fallback_when_the_build_fails(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def no_compiler(directory):
        raise kernels.KernelBuildError("simulated: no C++ compiler")

    w = make("g16-mins-fp16")
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(10))
    expected = GroupLinear(w)(x)
    monkeypatch.setattr(kernels, "build", no_compiler)
    monkeypatch.setattr(kernels, "build_directory", lambda: tmp_path / "absent")
    monkeypatch.setattr(kernels, "_registered", lambda: False)  # as in a fresh process
    kernels.load_kernels.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="simulated: no C\\+\\+ compiler"):
            layer = GroupLinear(w)
        assert layer.kernel_path == kernels.FALLBACK
        assert not kernels.load_kernels().available  # decided once: no second warning
        assert torch.equal(layer(x), expected)
    finally:
        kernels.load_kernels.cache_clear()


def test_fallback_quantizes_like_the_kernel() -> None:
    x = torch.tensor([[0.5, -1.0, 0.25] + [0.0] * 29, [0.0] * 32])
    q, d = group_fallback.quantize_rows(x)
    assert d[0, 0] == torch.tensor(1.0) / 127 and d[1, 0] == 0
    assert q[0, :3].tolist() == [64.0, -127.0, 32.0]
    assert not q[1].any()
