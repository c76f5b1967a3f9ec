"""The seed-keyed noise: bit-exact against a pure-Python reference, uniform, independent enough,
and a Gumbel-max that samples p exactly.

Statistical checks use fixed seeds; each states its false-alarm rate (all <= 1e-4).
"""

import math

import pytest
import torch
from scipy.stats import chisquare, kstest

from specdec.noise import (
    MAX_POSITION,
    draw,
    gumbel_argmax,
    hashed,
    mix32,
    mix32_,
    position_keys,
    position_range,
    resolve_seed,
    token_keys,
    uniforms,
)
from specdec.sampling import SamplingParams

M32 = 0xFFFFFFFF


def reference_bits(seed: int, position: int, token: int) -> int:
    """h(seed, t, x) in plain Python integers: the specification the tensors must meet."""
    seed &= (1 << 64) - 1
    low = mix32((seed & M32) ^ 0x9E3779B9)
    high = mix32((seed >> 32) ^ 0x85EBCA6B ^ low)
    key = mix32(mix32(position ^ low) ^ high)
    return mix32(mix32(token ^ 0xC2B2AE35) ^ key)


def noise_bits(seed: int, positions: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """h(seed, t, x) as int32 bit patterns, [*positions.shape, len(ids)]."""
    return hashed(position_keys(seed, positions.to(ids.device)), token_keys(ids))


def gumbel(seed: int, positions: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """G_t(x) = -log(-log U_t(x)), float64, [*positions.shape, len(ids)]."""
    return uniforms(noise_bits(seed, positions, ids)).log_().neg_().log_().neg_()


def unsigned(t: torch.Tensor) -> list[int]:
    return [v & M32 for v in t.tolist()]


def test_tensor_mix_equals_reference_including_wraparound_and_sign_bits():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 0x12345678, 0xDEADBEEF]
    values += torch.randint(0, 2**32, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    assert unsigned(mix32_(signed.clone())) == [mix32(v) for v in values]


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**40 + 7, 2**64 - 1, -3])
def test_noise_bits_equal_reference(seed):
    positions = torch.tensor([0, 1, 2, 517, MAX_POSITION])
    ids = torch.tensor([0, 1, 2, 63, 151935, 2**31 - 1])
    bits = noise_bits(seed, positions, ids)
    assert bits.dtype == torch.int32 and bits.shape == (5, 6)
    expected = [[reference_bits(seed, t, x) for x in ids.tolist()] for t in positions.tolist()]
    assert [unsigned(row) for row in bits] == expected


def test_uniforms_are_in_the_open_interval():
    extremes = torch.tensor([-(2**31), -1, 0, 2**31 - 1], dtype=torch.int32)
    u = uniforms(extremes)
    assert u.dtype == torch.float64 and bool(((u > 0) & (u < 1)).all())
    assert u.tolist() == [0.5 / 2**32, (2**31 - 0.5) / 2**32, (2**31 + 0.5) / 2**32,
                          1 - 0.5 / 2**32]
    assert bool(torch.isfinite(gumbel(0, torch.arange(4), torch.arange(1000))).all())


def _u(seed: int, positions: int = 64, vocab: int = 4096) -> torch.Tensor:
    return uniforms(noise_bits(seed, torch.arange(positions), torch.arange(vocab)))


def test_uniforms_pass_ks_and_bin_checks():
    u = _u(7).flatten()  # 262,144 values
    assert kstest(u.numpy(), "uniform").pvalue > 1e-4
    bits = (u * 2**32).long()
    for name, cells in (("top byte", bits >> 24), ("low byte", bits & 255)):
        counts = torch.bincount(cells, minlength=256).double()
        assert chisquare(counts.numpy()).pvalue > 1e-4, name


def test_noise_is_uncorrelated_across_positions_tokens_and_seeds():
    # |r| < 5 / sqrt(n) for independent uniforms: a false alarm about 6e-7 per pair
    base = _u(11) - 0.5
    pairs = {
        "next position": (base[:-1], base[1:]),
        "next token": (base[:, :-1], base[:, 1:]),
        "next seed": (base, _u(12) - 0.5),
        "seed 2**32 apart": (base, _u(11 + 2**32) - 0.5),
        "far position": (base, uniforms(noise_bits(11, torch.arange(64) + 100_000,
                                                     torch.arange(4096))) - 0.5),
    }
    for name, (a, b) in pairs.items():
        r = float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
        assert abs(r) < 5 / math.sqrt(a.numel()), (name, r)
    # nor do two positions share values token-wise (what a weak per-position key would cause)
    assert (base[0] == base[1]).sum() == 0


def test_gumbel_moments():
    g = gumbel(3, torch.arange(64), torch.arange(4096)).flatten()  # 262,144 values
    n = g.numel()
    # mean: Euler's gamma, sd pi/sqrt(6): 5 standard errors (false alarm ~6e-7)
    assert abs(float(g.mean()) - 0.5772156649) < 5 * (math.pi / math.sqrt(6)) / math.sqrt(n)
    assert abs(float(g.var()) - math.pi**2 / 6) < 0.05


def test_gumbel_argmax_equals_log_p_plus_gumbel():
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(3, 40, 500, generator=gen) * 3, dim=-1)
    probs[..., ::7] = 0.0  # filtered tokens
    at = position_range(1000, 40)
    got = gumbel_argmax(probs, 99, at)
    reference = (probs.double().log() + gumbel(99, at, torch.arange(500))).argmax(dim=-1)
    assert torch.equal(got, reference)
    assert bool((got % 7 != 0).all())  # p = 0 never wins


def test_gumbel_argmax_samples_p():
    """Frequencies over 20,000 positions match p (chi-square, false alarm 1e-4)."""
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.01])
    n = 20_000
    winners = gumbel_argmax(p.expand(n, -1), 5, position_range(0, n))
    counts = torch.bincount(winners, minlength=6).double()
    assert chisquare(counts.numpy(), (p.double() * n).numpy()).pvalue > 1e-4


def test_subset_of_columns_uses_the_token_ids_noise():
    gen = torch.Generator().manual_seed(2)
    full = torch.softmax(torch.randn(1, 30, generator=gen), dim=-1)
    ids = torch.tensor([3, 8, 9, 17, 25, 29])
    full_masked = torch.zeros_like(full)
    full_masked[:, ids] = full[:, ids]
    for position in range(50):
        at = position_range(position, 1)
        subset = ids[gumbel_argmax(full[:, ids], 4, at, ids)]
        assert torch.equal(subset, gumbel_argmax(full_masked, 4, at))


def test_position_range_bounds():
    assert position_range(5, 3).tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="positions"):
        position_range(MAX_POSITION, 2)
    with pytest.raises(ValueError, match="positions"):
        position_range(-1, 1)


def test_coupled_rule_follows_the_seed_unless_chosen():
    assert SamplingParams(seed=1).coupled_rule
    assert not SamplingParams().coupled_rule
    assert not SamplingParams(seed=1, coupled=False).coupled_rule
    assert SamplingParams(coupled=True).coupled_rule
    assert not SamplingParams(temperature=0, seed=1, coupled=True).coupled_rule  # greedy
    with pytest.raises(ValueError, match="coupled"):
        SamplingParams(coupled="yes")


def test_resolve_seed_gives_an_unseeded_coupled_request_a_fresh_seed():
    seeded = SamplingParams(seed=4)
    assert resolve_seed(seeded) is seeded
    unseeded = SamplingParams()
    assert resolve_seed(unseeded) is unseeded  # the rejection rule draws from a generator
    chosen = [resolve_seed(SamplingParams(coupled=True)) for _ in range(2)]
    assert all(p.seed is not None and p.coupled_rule for p in chosen)
    assert chosen[0].seed != chosen[1].seed


def test_draw_is_gumbel_max_when_coupled_and_multinomial_otherwise():
    q = torch.softmax(torch.randn(1, 50, generator=torch.Generator().manual_seed(3)), dim=-1)
    params = SamplingParams(seed=8)
    got = draw(q, params, torch.Generator(), 12)
    assert torch.equal(got, gumbel_argmax(q, 8, position_range(12, 1)))
    plain = SamplingParams(seed=8, coupled=False)
    a = draw(q, plain, torch.Generator().manual_seed(1), 12)
    b = torch.multinomial(q, 1, generator=torch.Generator().manual_seed(1))[:, 0]
    assert torch.equal(a, b)


@pytest.mark.gpu
def test_cpu_and_cuda_noise_are_identical():
    assert torch.cuda.is_available(), "the gpu mark needs a CUDA device"
    cuda = torch.device("cuda")
    ids = torch.arange(151_936)  # Qwen2.5's vocabulary
    for seed, start in ((0, 0), (2**63 + 5, 4000), (-7, MAX_POSITION - 63)):
        at = position_range(start, 64)
        bits = noise_bits(seed, at, ids)
        assert torch.equal(noise_bits(seed, at.to(cuda), ids.to(cuda)).cpu(), bits)
        # the float transform: the same bits, logarithms equal to float64 rounding
        on_cpu, on_cuda = gumbel(seed, at, ids), gumbel(seed, at.to(cuda), ids.to(cuda)).cpu()
        assert torch.allclose(on_cuda, on_cpu, rtol=1e-13, atol=0)
        probs = torch.softmax(torch.randn(64, len(ids), generator=torch.Generator()
                                          .manual_seed(seed % 1000)), dim=-1)
        assert torch.equal(gumbel_argmax(probs.to(cuda), seed, at.to(cuda)).cpu(),
                           gumbel_argmax(probs, seed, at))
