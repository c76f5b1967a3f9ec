"""logprobs come from the verify forward's logits: equal to a fresh forward's log-softmax."""

from __future__ import annotations

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.models import wrap
from tiny import perturbed, tiny_llama

PROMPT = [3, 17, 17, 5, 9, 3, 17]


@pytest.mark.parametrize("temperature,extra", [
    (0.0, {}), (1.0, {"top_k": 10}), (0.8, {"repetition_penalty": 1.3, "presence_penalty": 0.5}),
])
def test_logprobs_equal_a_fresh_forward(temperature, extra):
    model = tiny_llama(vocab_size=32, seed=5)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)  # spread out, so the top alternatives are not ~0
    decoder = SpeculativeDecoder(wrap(model), wrap(perturbed(model, 0.3, seed=6)), 3)
    params = SamplingParams(temperature=temperature, seed=3, max_new_tokens=24, logprobs=5,
                            ignore_eos=True, **extra)
    steps = list(decoder.stream(PROMPT, params))
    tokens = [t for step in steps for t in step.tokens]
    logprobs = [lp for step in steps for lp in step.logprobs]
    assert len(tokens) == len(logprobs) == 24 and len(steps) < 24  # blocks of several tokens
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([PROMPT + tokens])).logits[0].float()
    fresh = torch.log_softmax(logits[len(PROMPT) - 1: -1], dim=-1)
    for i, (token, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        assert lp.token == token
        assert lp.logprob == pytest.approx(float(fresh[i, token]), abs=1e-4)
        values, ids = fresh[i].topk(5)
        assert [t for t, _ in lp.top] == ids.tolist()
        assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_logprobs_off_by_default_and_cut_with_the_output():
    model = tiny_llama(vocab_size=32, seed=5)
    decoder = SpeculativeDecoder(wrap(model), wrap(perturbed(model, 0.1, seed=6)), 4)
    assert all(step.logprobs is None for step in decoder.stream(
        PROMPT, SamplingParams(temperature=0, max_new_tokens=5)))
    full = decoder.generate(PROMPT, SamplingParams(temperature=0, max_new_tokens=12)).tokens
    stop = next(t for i, t in enumerate(full) if i >= 4 and t not in full[:i])
    steps = list(decoder.stream(PROMPT, SamplingParams(
        temperature=0, max_new_tokens=12, logprobs=0, stop_token_ids=(stop,))))
    tokens = [t for step in steps for t in step.tokens]
    assert tokens == full[: full.index(stop) + 1]  # cut at the stop token, inside a block
    assert [lp.token for step in steps for lp in step.logprobs] == tokens
    assert all(lp.top == [] for step in steps for lp in step.logprobs)
