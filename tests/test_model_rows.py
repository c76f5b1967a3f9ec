"""Batched drafting (drafters/model_rows.py): a model drafter drafts every row in one forward
per draft position, and each row's drafts are those its own drafter gives alone (float32
tiny models: greedy tokens equal, q within 1e-5, sampled tokens equal under the same
generator seeds), across rows joining, leaving, drafting different lengths and rolling
back to what the target accepted."""

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.base import DraftRequest, Proposal
from specdec.drafters.model import ModelDrafter
from specdec.drafters.model_rows import ModelRowsDrafter
from specdec.models import wrap
from specdec.runtime.rows import make_rows
from specdec.runtime.static import StaticCausalLM
from specdec.sampling import TokenHistory
from tiny import perturbed, tiny_llama

PROMPTS = [[3, 17, 9], [5] * 12 + [7, 8], [11, 2, 30, 30, 2, 30, 30, 2], [9], [1, 2, 3, 4] * 4]


@pytest.fixture(scope="module")
def pair():
    model = tiny_llama(vocab_size=64, seed=0)
    return model, perturbed(model, 0.3, seed=2)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0),
                                      dict(temperature=0.0, repetition_penalty=1.5,
                                           frequency_penalty=0.5)])
def test_batched_drafts_equal_row_by_row_drafts(pair, sampling) -> None:
    _, draft_model = pair
    prototype = ModelDrafter(wrap(draft_model))
    rows = prototype.batched(4)
    assert isinstance(rows, ModelRowsDrafter)
    params = SamplingParams(**sampling, max_new_tokens=64)

    def history(context: torch.Tensor) -> TokenHistory | None:  # as Sequence keeps it
        return TokenHistory.of(context, 2, 64) if params.penalized else None

    g = torch.Generator().manual_seed(5)
    contexts: list[torch.Tensor] = []
    alone: list[ModelDrafter] = []

    def join(prompt: list[int]) -> None:
        contexts.append(torch.tensor([prompt]))
        alone.append(prototype.fork())
        alone[-1].begin(contexts[-1])
        rows.add(contexts[-1], reserve=32)

    def leave(index: int) -> None:
        rows.remove(index)
        for items in (contexts, alone):
            items[index] = items[-1]
            items.pop()

    for prompt in PROMPTS[:3]:
        join(prompt)
    compared = 0
    for step in range(12):
        if step == 4:
            leave(1)  # the last row takes its index
        if step in (5, 7):
            join(PROMPTS[3 if step == 5 else 4])
        gammas = [(step + i) % 5 for i in range(len(contexts))]  # 0..4, some rows none
        seeds = [100 * step + i for i in range(len(contexts))]
        batched = rows.propose([
            DraftRequest(c, k, params, torch.Generator().manual_seed(s), history(c))
            for c, k, s in zip(contexts, gammas, seeds, strict=True)])
        for i, (context, k, seed) in enumerate(zip(contexts, gammas, seeds, strict=True)):
            extra = {} if history(context) is None else {"history": history(context)}
            own = alone[i].propose(context, k, params, torch.Generator().manual_seed(seed),
                                   **extra)
            got = batched[i]
            assert isinstance(got, Proposal)
            assert got.tokens.tolist() == own.tokens.tolist(), (step, i)
            assert got.forwards == own.forwards
            if own.probs is None:
                assert got.probs is None
            else:
                assert got.probs is not None
                assert torch.allclose(got.probs, own.probs, atol=1e-5)
            compared += k
            # the target kept some drafts and replaced the next (or added one)
            kept = int(torch.randint(0, k + 1, (1,), generator=g))
            new = torch.randint(0, 64, (1, 1), generator=g)
            contexts[i] = torch.cat([context, own.tokens[:, :kept], new], dim=1)
    assert compared > 40 and rows.count == 4


def test_the_loop_drafts_every_row_in_one_forward_per_position(pair, monkeypatch) -> None:
    """generate_batch with a model drafter: the drafter's forwards per step are the draft
    positions (a catch-up forward, then one per further draft), not rows x positions; the
    tokens are batch 1's (greedy)."""
    model, draft_model = pair
    gamma = 3
    decoder = SpeculativeDecoder(wrap(model), wrap(draft_model), gamma=gamma)
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    alone = [decoder.generate(p, params).tokens for p in PROMPTS[:4]]
    loop = decoder.batch(make_rows(decoder.target, 4))
    assert isinstance(loop._row_drafter, ModelRowsDrafter)
    drafter_model = decoder.drafter.model
    calls, forward = [0], StaticCausalLM.forward_rows

    def counted(self, *args, **kwargs):
        calls[0] += self is drafter_model
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(StaticCausalLM, "forward_rows", counted)
    added = loop.add_many([(torch.tensor([p]), params) for p in PROMPTS[:4]])
    index = {id(s): i for i, s in enumerate(added)}
    tokens: list[list[int]] = [[] for _ in added]
    per_step = []
    while loop.sequences:
        calls[0] = 0
        rows = len(loop.sequences)
        for sequence, event in loop.step():
            tokens[index[id(sequence)]].extend(event.tokens)
        per_step.append((rows, calls[0]))
    assert per_step[0] == (4, gamma) and all(c <= gamma for _, c in per_step), per_step
    assert tokens == alone
