import pytest

from specdec import theory


@pytest.mark.parametrize("alpha,gamma,ops,speed", [
    (0.6, 2, 1.53, 1.96), (0.8, 5, 1.63, 3.69), (0.9, 10, 1.60, 6.86),
])
def test_paper_table_1(alpha, gamma, ops, speed):
    # Table 1 assumes a free drafter: c = c_hat = 0
    assert round(theory.speedup(alpha, gamma, 0.0), 2) == speed
    assert round(theory.expected_tokens(alpha, gamma), 2) == speed
    assert round(theory.operations_factor(alpha, gamma, 0.0), 2) == ops


@pytest.mark.parametrize("alpha,c,gamma,s", [(0.8, 0.05, 8, 3.09), (0.7, 0.1, 4, 1.98),
                                             (0.6, 0.02, 6, 2.17)])
def test_optimal_gamma_examples(alpha, c, gamma, s):
    best = theory.optimal_gamma(alpha, c)
    assert best == gamma
    assert round(theory.speedup(alpha, best, c), 2) == s


def test_no_speedup_when_alpha_not_above_c():
    assert not theory.speedup_possible(0.3, 0.3)
    assert theory.optimal_gamma(0.3, 0.35) == 0
    assert theory.speedup_possible(0.31, 0.3)
    assert theory.optimal_gamma(0.5, 0.1) > 0


def test_speedup_bounds():
    for alpha in (0.2, 0.5, 0.9):
        for c in (0.01, 0.1, 0.3):
            for gamma in range(1, 12):
                s = theory.speedup(alpha, gamma, c)
                assert s < min(1 / (1 - alpha), 1 / c)
            if alpha > c:
                best = theory.optimal_gamma(alpha, c)
                assert theory.speedup(alpha, best, c) >= (1 + alpha) / (1 + c) - 1e-12


def test_verify_cost_lowers_speedup_and_gamma():
    assert theory.speedup(0.8, 4, 0.1, v=1.2) < theory.speedup(0.8, 4, 0.1)
    costs = [1.0 + 0.3 * g for g in range(65)]  # verify cost growing with gamma
    assert theory.optimal_gamma(0.8, 0.05, v=costs) < theory.optimal_gamma(0.8, 0.05)


@pytest.mark.parametrize("kwargs", [{"alpha": 1.0}, {"alpha": -0.1}, {"c": -1.0}])
def test_invalid_inputs(kwargs):
    args = {"alpha": 0.5, "c": 0.1} | kwargs
    with pytest.raises(ValueError):
        theory.speedup(args["alpha"], 3, args["c"])
