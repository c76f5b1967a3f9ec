"""Sequence-level exactness: whole 3-token continuations from speculative sampling.

Tiny float32 models with a vocabulary of 8: the exact distribution of the 512 possible
continuations is computed by enumeration from the target alone, then N speculative
generations (fixed seeds) are compared with it two ways:
- chi-square over bins with expected count >= 5 (rarer ones pooled), p-value > 1e-4;
- total variation below the 99.9th percentile of the TV that N exact samples would show
  (simulated, 2,000 multinomial draws): a false-alarm rate of 0.1%.
Three configurations (two of Algorithm 1, one of block verification), so the family-wise
false-alarm rate is <= 0.3% + 0.03%.
Power (tests/power.py): the default N (3,000 / 2,000) catches any TV bias of 11% / 12% with
99% probability (worst-case direction, df = pooled bins - 1); the `slow` variants draw the N
at which the pooled chi-square catches any 2% TV bias with >= 99% probability (141,230 /
79,571 here: tens of minutes each on 2 cores).
"""

import itertools

import pytest
import torch
from scipy.stats import chisquare

from drafter_fixtures import SIZES, TV_BIAS
from power import pooled_draws
from specdec import SamplingParams, SpeculativeDecoder
from specdec.models import wrap
from specdec.sampling import adjusted_probs
from tiny import perturbed, tiny_llama

VOCAB, LENGTH = 8, 3
PROMPT = [1, 5, 2]


def _target():
    model = tiny_llama(vocab_size=VOCAB, seed=3)
    with torch.no_grad():  # tiny_llama sharpens for greedy tests; spread the mass out again
        model.lm_head.weight.mul_(0.15)
    return model


def exact_distribution(model, params: SamplingParams) -> torch.Tensor:
    """P(x1 x2 x3 | PROMPT) for all VOCAB**3 continuations, index = x1*64 + x2*8 + x3."""
    continuations = torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))
    prompt = torch.tensor(PROMPT).expand(len(continuations), -1)
    with torch.inference_mode():
        logits = model(input_ids=torch.cat([prompt, continuations], dim=1)).logits.float()
    probs = adjusted_probs(logits[:, len(PROMPT) - 1: -1], params)  # p(x_i | prefix)
    chosen = probs.gather(-1, continuations.unsqueeze(-1))[..., 0]
    return chosen.prod(dim=-1).double()


def tv_threshold(exact: torch.Tensor, draws: int, quantile: float = 0.999) -> float:
    gen = torch.Generator().manual_seed(0)
    counts = torch.stack([torch.multinomial(exact, draws, replacement=True, generator=gen)
                          .bincount(minlength=len(exact)) for _ in range(2000)])
    tvs = 0.5 * (counts.double() / draws - exact).abs().sum(dim=-1)
    return float(tvs.quantile(quantile))


def pooled_chisquare(counts: torch.Tensor, expected: torch.Tensor) -> float:
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    return float(chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("gamma,draws,params", [
    (2, 3000, dict(temperature=1.0)),
    (3, 2000, dict(temperature=0.7, top_k=5)),
])
def test_continuations_match_the_target_distribution(gamma, draws, params, size):
    model = _target()
    target, drafter = wrap(model), wrap(perturbed(model, 0.6, seed=4))
    # Algorithm 1: not the coupled rule, which seeded requests take by default
    assert_continuations_match(SpeculativeDecoder(target, drafter, gamma), model, params,
                               draws if size == "default" else None, coupled=False)


@pytest.mark.parametrize("size", SIZES)
def test_block_verification_continuations_match_the_target_distribution(size):
    """Block verification (verify_block.py) over whole continuations: a 2-draft block (3
    tokens, gamma 3: the room caps it) then the rest, at the default N's power (TV >= 11%)
    or, under `-m slow`, at 2%."""
    model = _target()
    target, drafter = wrap(model), wrap(perturbed(model, 0.6, seed=4))
    assert_continuations_match(SpeculativeDecoder(target, drafter, 3), model,
                               dict(temperature=1.0), 3000 if size == "default" else None,
                               block_verification=True)


def assert_continuations_match(decoder: SpeculativeDecoder, model, params: dict,
                               draws: int | None, **extra) -> None:
    """Sample `draws` 3-token continuations (seeds 0..draws-1) and test them against exact.

    draws None: as many as the pooled chi-square needs to catch a 2% TV bias w.p. >= 99%.
    """
    exact = exact_distribution(model, SamplingParams(**params))
    if draws is None:
        draws = pooled_draws(exact.numpy(), TV_BIAS, 1e-4, 0.99)
    counts = torch.zeros(VOCAB ** LENGTH, dtype=torch.long)
    drafted = accepted = 0
    for seed in range(draws):
        result = decoder.generate(PROMPT, SamplingParams(
            **params, **extra, seed=seed, max_new_tokens=LENGTH, ignore_eos=True))
        x1, x2, x3 = result.tokens
        counts[x1 * VOCAB * VOCAB + x2 * VOCAB + x3] += 1
        drafted += result.stats.drafted
        accepted += result.stats.accepted
    # the drafter must differ from the target enough for rejections to matter
    assert 0.2 < accepted / drafted < 0.95
    assert counts[exact == 0].sum() == 0
    assert pooled_chisquare(counts.double(), exact * draws) > 1e-4
    tv = 0.5 * (counts.double() / draws - exact).abs().sum()
    assert tv < tv_threshold(exact, draws), f"TV {tv:.3f}"
