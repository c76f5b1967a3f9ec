import math

import pytest
import torch

from specdec.sampling import SamplingParams, adjusted_probs, make_generator, sample


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0), ("top_p", 1.5),
    ("top_p", -0.2), ("top_k", -1), ("top_k", 2.5), ("min_p", 1.0), ("min_p", -0.1),
    ("max_new_tokens", 0), ("max_new_tokens", -3), ("seed", "x"), ("stop_token_ids", (-1,)),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_defaults_are_valid_and_greedy_is_temperature_zero():
    assert not SamplingParams().greedy
    assert SamplingParams(temperature=0).greedy


def test_greedy_is_one_hot_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    probs = adjusted_probs(logits, SamplingParams(temperature=0))
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_temperature_scales_logits():
    logits = torch.randn(3, 10)
    probs = adjusted_probs(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    probs = adjusted_probs(logits, SamplingParams(top_k=2))
    assert (probs[0] > 0).tolist() == [False, True, False, True, False]
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)


def test_top_p_keeps_smallest_set_reaching_p():
    probs_in = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs_in.log()
    kept = adjusted_probs(logits, SamplingParams(top_p=0.8)) > 0
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = adjusted_probs(logits, SamplingParams(top_p=0.81)) > 0
    assert kept.tolist() == [[True, True, True, False]]
    kept = adjusted_probs(logits, SamplingParams(top_p=0.1)) > 0
    assert kept.tolist() == [[True, False, False, False]]  # the top token is always kept


def test_min_p_drops_tokens_below_fraction_of_max():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    probs = adjusted_probs(logits, SamplingParams(min_p=0.2))  # floor 0.1
    assert (probs > 0).tolist() == [[True, True, True, False]]
    torch.testing.assert_close(probs[0, :3], torch.tensor([0.5, 0.3, 0.15]) / 0.95)


def test_sample_respects_seed_and_support():
    probs = torch.tensor([[0.0, 0.25, 0.75, 0.0]]).expand(5000, 4)
    a = sample(probs, make_generator(7))
    b = sample(probs, make_generator(7))
    assert torch.equal(a, b)
    assert set(a.tolist()) <= {1, 2}
    assert abs((a == 2).float().mean().item() - 0.75) < 0.03
