"""The low-bit runner: group-quantized products inside the one static runner.

Row r of a k-token forward, of a batch row and of a tree node must be the same bits as that
token's one-token forward (integer accumulation makes the products row-invariant; everything
else computes row by row), so greedy speculative output equals plain greedy output and a seed
gives one text whatever the drafter, γ or batch slot.
"""

import copy

import pytest
import torch

from identity_checks import (
    check_batch_rows,
    check_greedy_identity,
    check_seeded_identity,
    check_widths,
    one_token_logits,
)
from specdec.runtime.group_weights import GroupQuantized
from specdec.runtime.rows import StaticRows
from specdec.runtime.static import StaticCausalLM
from tiny import low_bit, perturbed, small_decoder


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_k_token_rows_equal_one_token_forwards_bit_for_bit(kind):
    runner = low_bit(small_decoder(kind, torch.float32, intermediate=512))
    prompt, tokens, reference = check_widths(runner)
    # a tree's nodes are the bits of their root paths' line forwards
    base = prompt.shape[1] - 1
    path = tokens[:, [0, 2, 3]]
    line = one_token_logits(runner, prompt, path)
    runner.rollback(runner.cached_length - base)
    logits = runner.extend_tree(tokens[:, :4], [-1, 0, 0, 2])
    assert torch.equal(logits[:, [0, 1]], reference[:, :2])
    assert torch.equal(logits[:, [0, 2, 3]], line)
    runner.accept_path([0, 2, 3])  # the kept path's cache continues like the line's
    after = runner.extend(tokens[:, 4:5])
    one_token_logits(runner, prompt, path)
    assert torch.equal(after, runner.extend(tokens[:, 4:5]))


def test_batch_rows_equal_their_one_token_forwards():
    runner = low_bit(small_decoder("qwen2", torch.float32, intermediate=512))
    check_batch_rows(runner, StaticRows(runner.fork(), max_rows=4))


def test_logits_follow_the_dequantized_model():
    """The runner computes the quantized weights' model: its logits stay within the error
    int8 activations add (the same model run by transformers' own static runner in float32
    on the dequantized weights is the reference), and the top token agrees almost always."""
    model = small_decoder("qwen2", torch.float32, intermediate=512)
    runner = low_bit(model)
    reference = StaticCausalLM(_dequantized_copy(model), None, "ref", pack=False)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 96, (1, 40), generator=generator)
    runner.prefill(ids[:, :20])
    reference.prefill(ids[:, :20])
    ours, theirs = runner.extend(ids[:, 19:]), reference.extend(ids[:, 19:])
    scale = theirs.abs().amax()
    assert (ours - theirs).abs().amax() < 0.05 * scale
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9


def _dequantized_copy(model):
    """A copy of `model` with every weight matrix replaced by the low-bit runner's values."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.state_dict().values():
            if p.dim() == 2:
                p.copy_(GroupQuantized.from_float(p).dequantize())
    return reference


@pytest.fixture(scope="module")
def low_bit_pair():
    model = small_decoder("qwen2", torch.float32, seed=11, intermediate=512)
    draft = perturbed(model, 0.2, seed=12)
    return low_bit(model, "target"), low_bit(draft, "draft")


@pytest.mark.parametrize("spec", ["ngram", "suffix", "ngram:tree", "model"])
def test_speculative_greedy_equals_plain_greedy(low_bit_pair, spec):
    check_greedy_identity(*low_bit_pair, spec)


def test_seeded_coupled_text_is_the_same_for_every_drafter_gamma_and_slot(low_bit_pair):
    check_seeded_identity(*low_bit_pair)
