"""Property-based checks (Hypothesis) of the sampling parameters at their edges: any value is
either refused with an InvalidParameter naming its field, or gives a finite distribution."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specdec.errors import InvalidParameter
from specdec.sampling import SamplingParams, TokenHistory, adjusted_probs, penalize
from specdec.verify import verify

VOCAB = 32
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.floats(min_value=-1e-30, max_value=1e-30), st.booleans(), st.none(),
                    st.text(max_size=3))
FIELDS = {
    "temperature": numbers, "top_p": numbers, "min_p": numbers, "top_k": numbers,
    "seed": st.one_of(st.integers(), numbers), "repetition_penalty": numbers,
    "frequency_penalty": numbers, "presence_penalty": numbers,
    "max_new_tokens": st.one_of(st.integers(), numbers),
    "logit_bias": st.one_of(st.dictionaries(st.integers(-5, VOCAB - 1), numbers, max_size=3),
                            st.lists(st.tuples(st.integers(), numbers), max_size=2)),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=FIELDS), st.integers(0, 2**32 - 1))
def test_params_are_refused_by_field_or_give_a_finite_distribution(fields, seed) -> None:
    try:
        params = SamplingParams(**fields)
        params.check_vocabulary(VOCAB)  # as the decoder and the server do
    except InvalidParameter as error:
        assert error.param in FIELDS, error.param  # the message names a field we sent
        assert str(error).startswith(error.param)
        return
    logits = torch.randn(2, 3, VOCAB, generator=torch.Generator().manual_seed(seed)) * 30
    context = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(seed))
    drafts = context[:, :2]
    penalized = penalize(logits, params, TokenHistory.of(context, 3, VOCAB), drafts)
    probs = adjusted_probs(penalized, params)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3), atol=1e-4)
    # and the verification rule runs on it (q: a valid distribution of the drafts)
    q = torch.softmax(torch.randn(2, 2, VOCAB), dim=-1)
    verdict = verify(drafts, q, probs, torch.Generator().manual_seed(seed))
    assert ((verdict.accepted >= 0) & (verdict.accepted <= 2)).all()
    assert ((verdict.next_token >= 0) & (verdict.next_token < VOCAB)).all()
    if params.seed is not None:
        assert 0 <= params.seed < 2**64
    assert params.temperature == 0 or params.temperature >= 1e-5


@given(st.floats(min_value=0, max_value=1e-5, exclude_max=True))
def test_temperatures_below_the_threshold_are_greedy(temperature) -> None:
    assert SamplingParams(temperature=temperature).greedy


@given(st.integers())
def test_seeds_are_64_bit_or_refused(seed) -> None:
    if -(2**63) <= seed < 2**64:
        assert SamplingParams(seed=seed).seed == seed % 2**64
    else:
        try:
            SamplingParams(seed=seed)
        except InvalidParameter as error:
            assert error.param == "seed" and "2**64" in str(error)
        else:
            raise AssertionError(f"seed {seed} was accepted")


@pytest.mark.parametrize("top_p", [5e-324, 1e-45, 1e-30])
def test_a_top_p_below_float32s_range_keeps_the_most_likely_token(top_p) -> None:
    """Found by the long server fuzz: top_p = 5e-324 is 0 in float32, which dropped every
    token and gave NaN."""
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(0))
    probs = adjusted_probs(logits, SamplingParams(top_p=top_p))
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), VOCAB).float())


def test_the_filed_examples() -> None:
    """The requests of the issue that failed every neighbour: refused or made greedy."""
    assert SamplingParams(temperature=1e-40).greedy
    for field, value in (("seed", 2**70), ("seed", -(2**70)), ("repetition_penalty", 1e-30),
                         ("temperature", math.inf), ("top_p", math.nan)):
        try:
            SamplingParams(**{field: value})
        except InvalidParameter as error:
            assert error.param == field
        else:
            raise AssertionError(f"{field}={value} was accepted")
