"""Compiled steps (torch.compile, static widths) decode exactly what the eager runner does.

Greedy float32 on a tiny model: blocks shorter than a width are padded (their logits dropped,
their cache slots overwritten later), blocks wider than every width fall back to eager.
Compiling takes a while on 2 cores, so one runner serves every case here. Dynamo's own
counters show that compiled code ran: each width compiles once, at warm-up, and is reused
across generations, rollbacks and cache regrowth (these tests fail with compilation off).
"""

import pytest
import torch
from torch._dynamo.utils import counters

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_drafter
from specdec.drafters.ngram import NgramDrafter
from specdec.models import StaticCausalLM, wrap
from specdec.runtime.static import step_function
from tiny import perturbed, tiny_llama

PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [7, 8, 9, 10, 7, 8, 11, 7, 8], [30, 31]]


@pytest.fixture(scope="module")
def pair():
    model = tiny_llama(seed=5)
    compiled = wrap(model, compile=True, widths=(1, 4))
    assert isinstance(compiled, StaticCausalLM)
    # the width's code object is shared by every runner in the process (other tests' shapes
    # may have graphs on it already): count this runner's new graphs
    frames, before = counters["frames"]["ok"], compiled.compiled_graphs()
    assert compiled.warmup(256) > 0  # compile time is measured and reported
    # the first runner of these shapes in the process: one graph per width, compiled now
    assert counters["frames"]["ok"] - frames == 2
    after = compiled.compiled_graphs()
    assert {w: after[w] - before.get(w, 0) for w in after} == {1: 1, 4: 1}
    return wrap(model), compiled


def test_each_width_compiles_once_across_generations_rollbacks_and_regrowth(pair):
    eager, compiled = pair
    frames, graphs, steps = counters["frames"]["ok"], compiled.compiled_graphs(), \
        compiled.compiled_steps
    capacity = compiled.cache.capacity
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)

    def generations():  # two generations each; n-gram drafts get rejected: rollbacks
        for prompt in PROMPTS[:2]:
            outputs = [SpeculativeDecoder(m, NgramDrafter(), 3).generate(prompt, params)
                       for m in (eager, compiled)]
            assert outputs[1].tokens == outputs[0].tokens
            assert outputs[1].stats.drafted > outputs[1].stats.accepted  # something rolled back

    generations()
    for model in (compiled, eager):  # a prompt past the capacity: the cache regrows
        model.prefill(torch.tensor([[3, 4, 5, 6, 7]]), reserve=capacity + 100)
        model.first = model.extend(torch.tensor([[9, 9, 9]]))  # width 4, padded
        model.rollback(2)
        model.second = model.extend(torch.tensor([[1]]))  # width 1
    assert compiled.cache.capacity > capacity
    torch.testing.assert_close(compiled.first, eager.first, atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled.second, eager.second, atol=1e-5, rtol=0)
    generations()  # on the regrown cache
    assert counters["frames"]["ok"] == frames, "a compiled width recompiled"
    assert compiled.compiled_graphs() == graphs
    assert compiled.compiled_steps > steps + 40  # the compiled steps are the ones that ran
    # every width is a code object of its own: dynamo's recompile limit (8 graphs per code
    # object) is per width, not shared by all the widths of a target and its drafter
    assert len({step_function(w).__code__ for w in (1, 2, 4, 8, 16)}) == 5


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
