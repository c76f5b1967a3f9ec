"""On the real Qwen2.5-Coder-0.5B in bfloat16 (opt in: -m real): block widths share one
numerics, and speculative greedy output equals plain greedy output on Spec-Bench prompts."""

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.drafters.factory import build_drafter
from specdec.models.loading import load_model
from specdec.prompts import user_prompt_ids

pytestmark = pytest.mark.real
MODEL = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def target():
    return load_model(MODEL, dtype="bfloat16")


def test_every_width_and_batch_row_is_bit_identical_to_one_token(target):
    assert target.packing.row_invariant
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 150_000, (1, 90), generator=generator)
    tokens = torch.randint(0, 150_000, (1, 16), generator=generator)
    target.prefill(prompt)
    reference = torch.cat([target.extend(tokens[:, i:i + 1]) for i in range(16)], 1)
    for k in range(1, 17):
        target.rollback(target.cached_length - (prompt.shape[1] - 1))
        assert torch.equal(target.extend(tokens[:, :k]), reference[:, :k]), k


@pytest.mark.parametrize("spec", ["ngram", "self@int4", "ngram+self@int4@vocab=32768"])
def test_bf16_greedy_identity_on_spec_bench(target, spec):
    questions = load_questions(DEFAULT_QUESTIONS, per_category=1)
    params = SamplingParams(temperature=0, max_new_tokens=64)
    drafter = build_drafter(spec, target, None)
    plain = SpeculativeDecoder(target, None)
    decoder = SpeculativeDecoder(target, drafter, gamma=4)
    for question in questions:
        prompt = user_prompt_ids(target.tokenizer, question.text)
        expected = plain.generate(prompt, params).tokens
        assert decoder.generate(prompt, params).tokens == expected, question.category
