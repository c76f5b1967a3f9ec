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


def test_each_width_compiles_once_on_cuda_across_generations_and_regrowth():
    """CUDA graphs over a cache whose capacity grows: the graphs are re-recorded, never
    recompiled (dynamo's counters), and the tokens are the CPU's before and after."""
    from torch._dynamo.utils import counters

    model = tiny_llama(vocab_size=80, seed=7)  # shapes no other test compiles: fresh graphs
    runner = wrap(tiny_llama(vocab_size=80, seed=7), device=CUDA, compile=True, widths=(1, 4))
    before = runner.compiled_graphs()
    runner.warmup(256)
    assert runner.compiled_graphs() == {w: n + 1 for w, n in before.items()}
    frames, steps = counters["frames"]["ok"], runner.compiled_steps
    params = SamplingParams(temperature=0, max_new_tokens=48, ignore_eos=True)
    cpu = SpeculativeDecoder(wrap(model), None)
    gpu = SpeculativeDecoder(runner, NgramDrafter(), 3)
    for regrow in (False, True):
        if regrow:  # a prompt past the capacity: the cache regrows, later ones reuse it
            runner.prefill(torch.tensor([[1, 2, 3]]), reserve=600)
            assert runner.cache.capacity > 256
        for prompt in ([1, 2, 3, 4, 1, 2, 3], [5, 6, 7, 5, 6, 7, 5]):
            assert gpu.generate(prompt, params).tokens == cpu.generate(prompt, params).tokens
    assert counters["frames"]["ok"] == frames, "a compiled width recompiled"
    assert runner.compiled_graphs() == {w: n + 1 for w, n in before.items()}
    assert runner.compiled_steps > steps + 40


@pytest.mark.parametrize("bits", [4, 8])
def test_low_bit_layers_on_cuda_run_cuda_kernels_close_to_the_cpu_layers(bits):
    """@int4 / @int8 on CUDA: torch's CUDA kernels (tinygemm's int4 layout), or refused with
    the reason where this build or GPU has none; never a dequantize-per-call stand-in."""
    import copy
    import re

    from torch import nn

    from specdec.runtime.low_bit_kernels import LowBitUnsupported, choose_low_bit
    from specdec.runtime.quantize import Int4Linear, quantized_linear

    torch.manual_seed(0)
    linear = nn.Linear(256, 200, bias=True).to(torch.bfloat16)
    try:
        choose_low_bit(bits, 256, CUDA)
    except LowBitUnsupported as refusal:  # the refusal is the contract where no kernel exists
        with pytest.raises(LowBitUnsupported, match=re.escape(str(refusal))):
            quantized_linear(nn.Linear(256, 200).to(CUDA), bits)
        pytest.skip(f"no CUDA kernel here: {refusal}")
    on_cpu = quantized_linear(linear, bits)
    on_cuda = quantized_linear(copy.deepcopy(linear).to(CUDA), bits)
    if bits == 4:
        assert isinstance(on_cuda, Int4Linear) and on_cuda.layout == "cuda"
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    expected, got = on_cpu(x).float(), on_cuda(x.to(CUDA)).float().cpu()
    # the same quantized weights; kernels differ in accumulation order (bf16 outputs)
    torch.testing.assert_close(got, expected, atol=0.05 * expected.abs().max().item(), rtol=0)


def test_verify_rows_on_cuda_equals_the_cpu_bit_for_bit():
    """Coupled, sample and block rows draw counter-based noise: the same verdicts on both
    devices (block's thresholds sum over the vocabulary: a flip needs a uniform within
    rounding of one, about 1e-7 a row)."""
    from specdec.verify_rows import RowRules, verify_rows

    g = torch.Generator().manual_seed(4)
    rows, k, vocab = 16, 4, 50
    target = torch.softmax(torch.randn(rows, k + 1, vocab, generator=g) * 2, dim=-1)
    draft = torch.softmax(torch.randn(rows, k, vocab, generator=g) * 2, dim=-1)
    drafts = torch.randint(0, vocab, (rows, k), generator=g)
    lengths = torch.randint(0, k + 1, (rows,), generator=g).tolist()
    rules = RowRules(lengths, ["sample", "coupled", "greedy", "block"] * 4,
                     [11 * i for i in range(rows)], [7 * i for i in range(rows)],
                     [bool(i % 2) for i in range(rows)])
    on_cpu = verify_rows(drafts, draft, target, rules).to_host(drafts, lengths)
    on_cuda = verify_rows(drafts.to(CUDA), draft.to(CUDA), target.to(CUDA),
                          rules).to_host(drafts.to(CUDA), lengths)
    assert [r[:3] for r in on_cuda] == [r[:3] for r in on_cpu]


def test_verify_tree_on_cuda_equals_the_cpu():
    """Trees draw the same counter-based noise as lines: the same paths on both devices."""
    from specdec.verify_tree import TreeShape, verify_tree

    g = torch.Generator().manual_seed(5)
    rows, vocab = 32, 50
    parents = [-1, 0, 0, 0, 1, 1, 2, 4]
    target = torch.softmax(torch.randn(rows, len(parents), vocab, generator=g) * 2, dim=-1)
    tokens = torch.randint(0, vocab, (rows, len(parents)), generator=g)
    keys = [13 * i for i in range(rows)]
    on_cpu = verify_tree(TreeShape.of(tokens, parents), None, target, keys, 9)
    on_cuda = verify_tree(TreeShape.of(tokens, parents, CUDA), None, target.to(CUDA), keys, 9)
    assert torch.equal(on_cuda.nodes.cpu(), on_cpu.nodes)
    assert torch.equal(on_cuda.next_token.cpu(), on_cpu.next_token)
