"""Seed-keyed Gumbel noise: the same random numbers for a (seed, position, token) on any device.

Plain sampling can be written as Gumbel-max: token_t = argmax_x log p_t(x) + G_t(x) with G_t
i.i.d. Gumbel. Keying G by (seed, absolute position t, token id x) through a counter-based hash
makes the sampled text a function of the seed and the target alone: a drafter that drafts with
the same noise, and a verifier that keeps drafts while they equal the target's own Gumbel-max
token (verify.verify_coupled), emit plain Gumbel-max sampling token for token, whatever the
drafter, gamma, batch or device.

The hash is integer arithmetic on int32 tensors (no backend RNG), so CPU and CUDA compute the
same bits. Multiplications wrap around modulo 2**32 (two's complement, as torch's integer
kernels do on both backends; tests check every operation against a pure-Python reference) and
right shifts are made logical by masking. 32 bits per uniform: ties and the truncated tail
move at most about V / 2**32 (4e-5 for 152k tokens) of probability.

Pure tensor code: nothing here knows about models.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import replace

import torch

from specdec.sampling import SamplingParams, sample

_M32 = 0xFFFFFFFF
# lowbias32 (C. Wellons' hash-prospector): a bijection on 32-bit integers with low bias
_MUL1, _MUL2 = 0x7FEB352D, 0x846CA68B
_SEED_LO, _SEED_HI, _TOKEN = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35  # arbitrary odd salts
MAX_POSITION = 2**31 - 1


def mix32(x: int) -> int:
    """lowbias32 on a Python int in [0, 2**32): the reference the tensor version must match."""
    x ^= x >> 16
    x = (x * _MUL1) & _M32
    x ^= x >> 15
    x = (x * _MUL2) & _M32
    return x ^ (x >> 16)


def _signed(value: int) -> int:
    """A 32-bit pattern as the int32 value with the same bits."""
    value &= _M32
    return value - (1 << 32) if value >= 1 << 31 else value


def _shift_xor_(x: torch.Tensor, shift: int) -> torch.Tensor:
    """x ^= x >>> shift (logical shift: the sign bits an arithmetic shift brings are masked)."""
    return x.bitwise_xor_((x >> shift).bitwise_and_((1 << (32 - shift)) - 1))


def mix32_(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 in place on an int32 tensor (bit patterns; multiplication wraps)."""
    _shift_xor_(x, 16)
    x.mul_(_signed(_MUL1))
    _shift_xor_(x, 15)
    x.mul_(_signed(_MUL2))
    return _shift_xor_(x, 16)


def position_keys(seed: int, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per (seed, position), int32 with positions' shape and device.

    positions must lie in [0, MAX_POSITION] (not checked here: reading them back from a GPU
    would stall it; `position_range` checks them as Python ints). The seed is taken modulo 2**64;
    both halves are mixed in.
    """
    low, high = _seed_halves(seed)
    keys = positions.to(torch.int32).bitwise_xor(low)
    mix32_(keys)
    keys.bitwise_xor_(high)
    return mix32_(keys)


def row_position_keys(seeds: list[int], positions: torch.Tensor) -> torch.Tensor:
    """position_keys with a seed per row: positions [B, m], seeds [B] -> int32 [B, m], row i
    the same bits as position_keys(seeds[i], positions[i]). One small host-to-device copy."""
    halves = torch.tensor([_seed_halves(s) for s in seeds], dtype=torch.int32,
                          device=positions.device).view(len(seeds), 2, 1)
    keys = positions.to(torch.int32).bitwise_xor(halves[:, 0])
    mix32_(keys)
    keys.bitwise_xor_(halves[:, 1])
    return mix32_(keys)


def _seed_halves(seed: int) -> tuple[int, int]:
    """The two int32 words a seed (modulo 2**64) mixes into every position key."""
    seed &= (1 << 64) - 1
    low = mix32((seed & _M32) ^ _SEED_LO)
    high = mix32((seed >> 32) ^ _SEED_HI ^ low)
    return _signed(low), _signed(high)


def position_range(start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """start, start + 1, ..., start + count - 1 as int64 on device, built there (no copy)."""
    if start < 0 or start + count - 1 > MAX_POSITION:
        raise ValueError(f"token positions must be in [0, {MAX_POSITION}], got "
                         f"{start}..{start + count - 1}")
    return torch.arange(start, start + count, device=device)


def token_keys(ids: torch.Tensor) -> torch.Tensor:
    """Each token id hashed over 32 bits, int32. Spreading ids over 2**32 first means two
    positions' noise share values only where 32-bit hashes collide, not for every token."""
    keys = ids.to(torch.int32).bitwise_xor(_signed(_TOKEN))
    return mix32_(keys)


@functools.lru_cache(maxsize=8)
def _vocabulary_keys(vocab_size: int, device: torch.device) -> torch.Tensor:
    """token_keys of 0..vocab_size-1, kept: hashing 152k ids costs more than the rest of a
    one-position draw. Never written to (callers xor into a new tensor)."""
    return token_keys(torch.arange(vocab_size, device=device))


def hashed(keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The hash h(seed, t, x) as int32 bit patterns, [*keys.shape, len(tokens)], from position
    keys (`position_keys`) and token keys (`token_keys`)."""
    return mix32_(tokens.expand(*keys.shape, -1).bitwise_xor(keys[..., None]))


def uniforms(bits: torch.Tensor) -> torch.Tensor:
    """Bit patterns -> U in (0, 1), float64: (h + 1/2) / 2**32 with h read as unsigned."""
    # int32 covers [-2**31, 2**31): adding 2**31 flips the top bit, the unsigned reading
    return (bits.double() + (2**31 + 0.5)).mul_(2.0**-32)


def gumbel_argmax(probs: torch.Tensor, seed: int, at: torch.Tensor,
                  ids: torch.Tensor | None = None) -> torch.Tensor:
    """argmax over the last dim of log probs + G (column indices, int64, probs.shape[:-1]).

    probs [..., V'] are distributions whose column j is token ids[j] (default: j); at holds
    the absolute positions, broadcast to probs.shape[:-1]. Computed as the equivalent
    exponential race, argmax p / E with E = -log U: one logarithm per entry instead of three.
    Columns with p = 0 (filtered tokens) score -inf and never win.
    """
    where = at.to(probs.device).expand(probs.shape[:-1])
    return keyed_gumbel_argmax(probs, position_keys(seed, where), ids)


def keyed_gumbel_argmax(probs: torch.Tensor, keys: torch.Tensor,
                        ids: torch.Tensor | None = None) -> torch.Tensor:
    """gumbel_argmax with the position keys given, [*probs.shape[:-1]] int32 (one seed, or
    one per row: row_position_keys)."""
    tokens = _vocabulary_keys(probs.shape[-1], probs.device) if ids is None \
        else token_keys(ids.to(probs.device))
    neg_e = uniforms(hashed(keys, tokens))
    neg_e = neg_e.log_().float()
    return neg_e.div_(probs.float()).argmax(dim=-1)  # max of -E/p = max of p/E


def stream_key(generator: torch.Generator) -> int:
    """A 62-bit key for counter-based draws (the "sample" and "block" rules, lines and
    trees alike: acceptance.AcceptanceRule), drawn from `generator` on its device (one read
    back, once per request)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def resolve_seed(params: SamplingParams) -> SamplingParams:
    """params with a seed when it uses the coupled rule without one (fresh, per request)."""
    if params.coupled_rule and params.seed is None:
        return replace(params, seed=secrets.randbits(63), coupled=True)
    return params


def draw(probs: torch.Tensor, params: SamplingParams, generator: torch.Generator,
         position: int, ids: torch.Tensor | None = None) -> torch.Tensor:
    """One column per row of probs [B, V']: how drafters sample their q.

    Under the coupled rule, Gumbel-max with the request's noise at absolute `position` (the
    target's token position being drafted; ids: token id of each column, for q over a subset
    of the vocabulary); otherwise a multinomial draw from generator.
    """
    if params.coupled_rule:
        assert params.seed is not None, "resolve_seed(params) first"
        return gumbel_argmax(probs, params.seed, position_range(position, 1, probs.device), ids)
    return sample(probs, generator)
