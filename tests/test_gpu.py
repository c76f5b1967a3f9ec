"""The exactness and greedy-identity tests on a CUDA device (opt in: `pytest -m gpu`).

Deselected by default; on a machine without CUDA, `-m gpu` fails here rather than skipping,
so a GPU run that silently tested nothing cannot pass.
"""

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.ngram import NgramDrafter
from specdec.models import wrap
from test_exactness_sequence import (
    _target,
    assert_continuations_match,
)
from tiny import perturbed, tiny_llama

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_cuda_is_available():
    assert torch.cuda.is_available(), "the gpu mark needs a CUDA device"


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("drafter,gamma", [(None, 0), ("ngram", 4), ("model", 3)])
def test_greedy_on_cuda_equals_plain_greedy_on_cpu(drafter, gamma, compile):
    model = tiny_llama(seed=5)
    params = SamplingParams(temperature=0, max_new_tokens=48, ignore_eos=True)
    cpu = SpeculativeDecoder(wrap(model), None)
    target = wrap(tiny_llama(seed=5), device=CUDA, compile=compile, widths=(1, 2, 4, 8))
    assert target.device.type == "cuda"
    if drafter == "model":
        draft = wrap(perturbed(tiny_llama(seed=5), 0.3), device=CUDA, compile=compile)
    else:
        draft = NgramDrafter() if drafter else None
    gpu = SpeculativeDecoder(target, draft, gamma)
    for prompt in ([1, 2, 3, 4, 5, 1, 2, 3], [7, 8, 9, 10, 7, 8, 11, 7, 8], [30, 31]):
        expected = cpu.generate(prompt, params)
        got = gpu.generate(prompt, params)
        assert got.tokens == expected.tokens, (prompt, drafter, gamma, compile)


@pytest.mark.parametrize("drafter,gamma", [("ngram", "auto"), ("model", 3)])
def test_seeded_sampling_on_cuda_equals_plain_seeded_sampling_on_cpu(drafter, gamma):
    """The coupled rule: same seed, same text, across devices and drafters (float32 logits
    differ across devices only by round-off, far from flipping a Gumbel-max)."""
    from specdec.control.auto import GammaController

    model = tiny_llama(seed=5)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.1)
    cpu = SpeculativeDecoder(wrap(model), None)
    target = wrap(perturbed(model, 0.0), device=CUDA)
    draft = NgramDrafter() if drafter == "ngram" else wrap(perturbed(model, 0.3), device=CUDA)
    gpu = SpeculativeDecoder(target, draft, GammaController if gamma == "auto" else gamma)
    for seed, prompt in enumerate(([1, 2, 3, 4, 5, 1, 2, 3], [7, 8, 9, 10, 7, 8, 11], [30, 31])):
        params = SamplingParams(temperature=1.0, top_p=0.95, seed=seed, max_new_tokens=48,
                                ignore_eos=True)
        assert gpu.generate(prompt, params).tokens == cpu.generate(prompt, params).tokens


@pytest.mark.parametrize("gamma,draws,params", [(2, 3000, dict(temperature=1.0)),
                                                (3, 2000, dict(temperature=0.7, top_k=5))])
def test_continuations_on_cuda_match_the_target_distribution(gamma, draws, params):
    model = _target()
    target = wrap(_target(), device=CUDA)
    drafter = wrap(perturbed(model, 0.6, seed=4), device=CUDA)
    decoder = SpeculativeDecoder(target, drafter, gamma)
    assert_continuations_match(decoder, model, params, draws, coupled=False)
