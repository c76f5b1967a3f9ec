"""Compiled steps (torch.compile, static widths) decode exactly what the eager runner does.

Greedy float32 on a tiny model: blocks shorter than a width are padded (their logits dropped,
their cache slots overwritten later), blocks wider than every width fall back to eager.
Compiling takes a while on 2 cores, so one runner serves every case here.
"""

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_drafter
from specdec.drafters.ngram import NgramDrafter
from specdec.models import StaticCausalLM, wrap
from tiny import perturbed, tiny_llama

PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [7, 8, 9, 10, 7, 8, 11, 7, 8], [30, 31]]


@pytest.fixture(scope="module")
def pair():
    model = tiny_llama(seed=5)
    compiled = wrap(model, compile=True, widths=(1, 4))
    assert isinstance(compiled, StaticCausalLM)
    assert compiled.warmup(256) > 0  # compile time is measured and reported
    return wrap(model), compiled


@pytest.mark.parametrize("drafter,gamma", [(None, 0), ("ngram", 3), ("ngram", 6),
                                           ("model", 3), ("self@int4@vocab=20", 4)])
def test_compiled_greedy_equals_eager(pair, drafter, gamma):
    eager, compiled = pair
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)
    for prompt in PROMPTS:
        outputs = []
        for target in (eager, compiled):
            if drafter == "model":
                draft = wrap(perturbed(target.model, 0.3), compile=target is compiled,
                             widths=(1,))
            elif drafter and drafter.startswith("self"):  # compiled when the target is
                draft = build_drafter(drafter, target, None)
                assert bool(getattr(draft.model, "widths", ())) == (target is compiled)
            else:
                draft = NgramDrafter() if drafter else None
            outputs.append(SpeculativeDecoder(target, draft, gamma).generate(prompt, params))
        assert outputs[1].tokens == outputs[0].tokens, (prompt, drafter, gamma)
        assert outputs[1].stats.target_calls == outputs[0].stats.target_calls
    if drafter:
        assert outputs[0].stats.drafted > 0


def test_compiled_rollback_then_extend_equals_fresh_forward(pair):
    eager, compiled = pair
    prompt = torch.tensor([[3, 4, 5, 6, 7]])
    for model in (compiled, eager):
        context = model.prefill(prompt)
        model.extend(torch.cat([context[:, -1:], torch.tensor([[9, 9, 9]])], dim=1))
        model.rollback(3)  # keep the pending token; drop the three 9s
        model.extend_result = model.extend(torch.tensor([[1, 2, 3]]))  # width 4 pads one slot
    torch.testing.assert_close(compiled.extend_result, eager.extend_result, atol=1e-5, rtol=0)
