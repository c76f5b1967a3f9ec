"""GammaController: the gamma it picks is the argmax of S for the alpha, c and v it measured;
it falls back to plain decoding when no speedup is possible and probes again later; the
decoder's output does not depend on it (greedy identity); the factory specs parse."""

from __future__ import annotations

import pytest

from specdec.control.auto import ControllerConfig, GammaController
from specdec.control.budget import AutoPolicies
from specdec.control.policy import StepRecord
from specdec.decoding import SpeculativeDecoder
from specdec.drafters.base import Drafter
from specdec.drafters.factory import build_drafter, build_gamma
from specdec.drafters.model import ModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.models import wrap
from specdec.sampling import SamplingParams
from tiny import perturbed, tiny_llama

TARGET_S = 0.020  # seconds for a 1-token target pass
SLOPE = 0.04  # each drafted token adds 4% of a 1-token pass


def _brute_force_gamma(alpha: float, c: float, max_gamma: int) -> int:
    """argmax_g E(alpha, g) / (g*c + v(g)), written out independently of specdec.theory."""
    def s(g: int) -> float:
        expected = sum(alpha ** i for i in range(g + 1))
        return expected / (g * c + 1 + SLOPE * g)
    return max(range(max_gamma + 1), key=s)


def _feed(controller: GammaController, alpha: float, c: float, steps: int = 200) -> None:
    """Steps with every beta = alpha, drafter c per drafted token, target a + b*k; k = 0 is a
    plain step (the controller measures those itself, about one step in 120)."""
    for i in range(steps):
        k = i % 7  # several draft lengths so the verify-cost line is identifiable
        controller.observe(StepRecord(
            drafted=k, accepted=0, betas=[alpha] * k, drafter_s=c * TARGET_S * k,
            drafter_forwards=k, target_s=TARGET_S * (1 + SLOPE * k)))


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("c", [0.0, 0.01, 0.05, 0.1, 0.3, 0.6])
def test_gamma_is_argmax_of_speedup(alpha, c):
    controller = GammaController(ControllerConfig(max_gamma=16))
    _feed(controller, alpha, c)
    assert controller.alpha == pytest.approx(alpha, abs=1e-6)
    assert controller.c == pytest.approx(c, abs=1e-6)
    assert controller.verify_costs()[5] == pytest.approx(1 + 5 * SLOPE, rel=1e-6)
    assert controller.choose() == _brute_force_gamma(alpha, c, 16)


@pytest.mark.parametrize(("alpha", "fixed", "per_token"), [(0.6, 0.1, 0.25), (0.8, 0.3, 0.1),
                                                           (0.5, 0.05, 0.4)])
def test_fixed_drafter_cost_per_step_is_not_charged_per_token(alpha, fixed, per_token):
    """Drafter time d0 + d1*k (e.g. a cache re-sync each step): gamma maximises
    E / (k*d1 + v(k) + d0), not E / (k * mean cost per token + v(k))."""
    controller = GammaController(ControllerConfig(max_gamma=16))
    for i in range(200):
        k = i % 7
        controller.observe(StepRecord(k, 0, [alpha] * k, TARGET_S * (fixed + per_token * k), k,
                                      TARGET_S * (1 + SLOPE * k)))
    assert controller.c == pytest.approx(per_token, rel=1e-6)
    assert controller.fixed_draft_cost == pytest.approx(fixed, rel=1e-6)

    def s(g: int) -> float:
        cost = 1 + SLOPE * g + (per_token * g + fixed if g else 0.0)
        return sum(alpha ** i for i in range(g + 1)) / cost
    assert controller.choose() == max(range(17), key=s)


def _step_shaped(k: int) -> float:
    """Verify cost of a float32 target on this CPU: flat up to 3 tokens, then a jump."""
    return 1.0 if k == 0 else 1.1 if k <= 2 else 2.05 + 0.05 * (k - 3)


@pytest.mark.parametrize(("alpha", "c"), [(0.93, 0.36), (0.95, 0.2), (0.85, 0.36)])
def test_observed_widths_use_their_own_cost_not_the_line(alpha, c):
    """A line through step-shaped costs picks 3, 5 or 1 drafts here; the measured widths say 2."""
    controller = GammaController(ControllerConfig(max_gamma=16))
    for i in range(200):
        k = i % 7
        controller.observe(StepRecord(k, 0, [alpha] * k, c * TARGET_S * k, k,
                                      TARGET_S * _step_shaped(k)))
    costs = controller.verify_costs()
    assert costs[3] / costs[2] == pytest.approx(_step_shaped(3) / _step_shaped(2), rel=1e-6)

    def s(g: int) -> float:
        return sum(alpha ** i for i in range(g + 1)) / (g * c + (_step_shaped(g) if g else 1))
    assert max(range(7), key=s) == 2
    assert controller.choose() == 2


def test_controllers_of_one_auto_factory_share_timings_not_acceptance():
    factory = AutoPolicies(line_config=ControllerConfig(max_gamma=16))
    first = factory()
    _feed(first, alpha=0.9, c=0.1)
    second = factory()  # the next request: the models' timings are known, its alpha is not
    assert second.verify_costs() == first.verify_costs()
    assert second.c == pytest.approx(first.c)
    assert second.alpha == pytest.approx(second.config.prior_alpha)
    assert first.alpha == pytest.approx(0.9, abs=1e-6)
    assert factory().costs is first.costs and GammaController().costs is not first.costs
    assert build_gamma("auto")().costs is not build_gamma("auto")().costs


def test_falls_back_to_plain_decoding_and_probes_with_backoff():
    config = ControllerConfig(probe_every=3, probe_gamma=2, max_probe_every=6)
    controller = GammaController(config)
    _feed(controller, alpha=0.2, c=0.4)  # alpha < c: no gamma gives a speedup
    chosen = []
    for _ in range(20):
        gamma = controller.choose()
        chosen.append(gamma)
        controller.observe(StepRecord(gamma, 0, [0.2] * gamma, 0.4 * TARGET_S * gamma, gamma,
                                      TARGET_S * (1 + SLOPE * gamma)))
    probes = [i for i, g in enumerate(chosen) if g]
    assert all(chosen[i] == 2 for i in probes)
    assert probes == [3, 10, 17]  # after 3 plain steps, then 6 (doubled, capped)


def test_recovers_when_the_drafter_becomes_good():
    controller = GammaController(ControllerConfig(probe_every=2))
    _feed(controller, alpha=0.1, c=0.3)
    assert controller.choose() == 0
    for _ in range(40):  # probes now get everything accepted
        gamma = controller.choose()
        controller.observe(StepRecord(gamma, gamma, [1.0] * gamma, 0.3 * TARGET_S * gamma,
                                      gamma, TARGET_S * (1 + SLOPE * gamma)))
    assert controller.choose() > 2


def _drive(controller: GammaController, steps: int, cost,
           widest: int = 4) -> tuple[list[int], float]:
    """Steps at the controller's gamma; the drafter proposes at most `widest` tokens (so every
    speculating step verifies the same width), 2 of them accepted, betas 0.6; a pass over k
    drafts takes cost(k) seconds. The gammas chosen, and the last 200 steps' tokens per
    second over plain decoding's."""
    chosen, tokens, seconds = [], [], []
    for _ in range(steps):
        gamma = controller.choose()
        k = min(gamma, widest)
        accepted = min(2, k)
        controller.observe(StepRecord(k, accepted, [0.6] * k, 1e-5 * k, 0, cost(k)))
        chosen.append(gamma)
        tokens.append(accepted + 1)
        seconds.append(cost(k))
    return chosen, sum(tokens[-200:]) / sum(seconds[-200:]) * cost(0)


def test_plain_cost_is_measured_not_extrapolated_from_wide_passes():
    """Width k costs a + b*k with b = a (each draft as dear as a token), and only k = 4 is
    seen while speculating: a line through that one width with the prior slope puts the plain
    cost at 5a / 1.12 (4.5x off), so 4 drafts (~2.3 tokens for 5a) look 2x faster than plain
    when they are 2x slower. The controller measures a plain step instead and stops drafting."""
    def cost(k: int) -> float:
        return TARGET_S * (1 + k)

    blind = GammaController(ControllerConfig(plain_weight=0.0))  # the old behaviour
    chosen, speed = _drive(blind, 300, cost)
    assert min(chosen) > 0  # never measured plain: speculates at 0.6x plain's speed throughout
    assert speed < 0.65
    assert blind._target_line()[0] == pytest.approx(5 * TARGET_S / 1.12, rel=1e-6)

    controller = GammaController()
    chosen, speed = _drive(controller, 300, cost)
    a, b = controller._target_line()
    assert a == pytest.approx(TARGET_S, rel=1e-6) and b == pytest.approx(TARGET_S, rel=1e-6)
    assert controller.verify_costs()[4] == pytest.approx(5.0, rel=1e-6)
    assert chosen[1] == 0  # the second step measures plain (the first had no baseline yet)
    last = chosen[-200:]
    assert last.count(0) >= 0.85 * len(last)  # plain, with probes now and then
    assert max(last) <= controller.config.probe_gamma
    assert speed >= 0.95  # never slower than plain beyond the probes


def test_plain_is_remeasured_about_once_in_120_speculating_steps():
    """Cheap width (speculation pays): a plain step only when the 1-token time has faded."""
    controller = GammaController()
    chosen, speed = _drive(controller, 500, lambda k: TARGET_S * (1 + 0.02 * k), widest=16)
    assert speed > 2.0
    plain = [i for i, g in enumerate(chosen) if g == 0]
    assert 3 <= len(plain) <= 6  # steps 1, ~121, ~241, ...: < 1.5% of the steps
    assert controller._target_line()[0] == pytest.approx(TARGET_S, rel=1e-6)


def test_empty_proposals_do_not_move_alpha():
    controller = GammaController()
    _feed(controller, alpha=0.7, c=0.0)
    controller.observe(StepRecord(0, 0, [], 1e-5, 0, TARGET_S))  # n-gram found nothing
    assert controller.alpha == pytest.approx(0.7, abs=1e-6)


@pytest.mark.parametrize("kind", ["ngram", "model"])
def test_auto_gamma_keeps_greedy_output(kind):
    target = wrap(tiny_llama(64, seed=11), name="target")
    drafter = (NgramDrafter() if kind == "ngram"
               else ModelDrafter(wrap(perturbed(target.model, 0.2), name="d")))
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)
    prompt = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4]
    expected = SpeculativeDecoder(target, None).generate(prompt, params).tokens
    result = SpeculativeDecoder(target, drafter, gamma=GammaController).generate(prompt, params)
    assert result.tokens == expected
    assert result.stats.drafted > 0


class _Broken(Drafter):
    name = "broken"

    def __init__(self, crash: bool):
        self.crash = crash

    def begin(self, prompt_ids):
        pass

    def propose(self, context, gamma, params, generator):
        if self.crash:
            raise RuntimeError("drafter died")
        from specdec.drafters.base import Proposal
        return Proposal.empty(1)


@pytest.mark.parametrize("crash", [True, False])
def test_broken_drafter_degrades_to_plain_decoding(crash):
    target = wrap(tiny_llama(64, seed=12), name="target")
    params = SamplingParams(temperature=1.0, seed=3, max_new_tokens=12, ignore_eos=True)
    expected = SpeculativeDecoder(target, None).generate([1, 2, 3], params).tokens
    decoder = SpeculativeDecoder(target, _Broken(crash), gamma=GammaController)
    if crash:
        with pytest.warns(RuntimeWarning, match="drafter died"):
            result = decoder.generate([1, 2, 3], params)
        # every step but the last (no room left for a draft) asked the drafter and lost it
        assert result.stats.drafter_failures == result.stats.target_calls - 1
    else:
        result = decoder.generate([1, 2, 3], params)
    assert result.tokens == expected  # same seed, same tokens: nothing drafted, nothing lost


def test_build_gamma_and_drafter_specs():
    assert build_gamma("6") == 6
    assert isinstance(build_gamma("auto")(), GammaController)
    for bad in ("-1", "65", "fast", "2.5"):
        with pytest.raises(ValueError, match="--gamma"):
            build_gamma(bad)
    assert build_drafter("none", None, None) is None
    ngram = build_drafter("ngram:2:5", None, None)
    assert (ngram.min_n, ngram.max_n) == (2, 5)
    with pytest.raises(ValueError, match="known: none, ngram"):
        build_drafter("trigram:x.txt", None, None)
    with pytest.raises(ValueError, match="MIN:MAX"):
        build_drafter("ngram:3", None, None)
    with pytest.raises(ValueError, match="min_n"):
        build_drafter("ngram:5:2", None, None)


def _batch_controller(a: float, b: float):
    """A batch controller that has seen forwards cost a + b * tokens."""
    from specdec.control.batch import BatchGammaController

    controller = BatchGammaController()
    for tokens in (1, 5, 16, 80):
        controller.observe(tokens, a + b * tokens, 0, 0.0)
    return controller


def test_batch_controller_backs_off_as_the_batch_grows_and_returns():
    """Verification nearly free at one row, ~linear in tokens at many: speculation pays
    alone, switches off for 16 rows, comes back when the batch shrinks."""
    controller = _batch_controller(a=1.0, b=0.1)
    assert controller.model_width([0.6], [16]) >= 2
    assert controller.model_width([0.6] * 16, [16] * 16) == 0
    assert controller.model_width([0.6] * 2, [16] * 2) >= 2


def test_batch_controller_follows_acceptance_and_cost():
    cheap = _batch_controller(a=1.0, b=0.001)  # a GPU-like flat forward
    assert cheap.model_width([0.9] * 8, [16] * 8) >= 6
    assert cheap.model_width([0.05] * 8, [16] * 8) <= 1
    steep = _batch_controller(a=1.0, b=0.5)  # every token costs half a forward
    assert steep.model_width([0.3], [16]) == 0
    assert cheap.model_width([0.9] * 4, [2, 1, 0, 2]) <= 2  # never wider than any row may draft


def test_batch_controller_measures_before_it_drafts():
    from specdec.control.batch import BatchGammaController
    from specdec.theory import expected_tokens

    controller = BatchGammaController()
    assert controller.choose([0.5] * 4, [8] * 4) == 0  # plain steps are measured first
    controller.observe(4, 1.0, 0, 0.0)
    controller.observe_step(4, False, 4, 1.0)
    assert controller.choose([0.5] * 4, [8] * 4) == 4  # a second width: the initial one
    assert expected_tokens(0.5, 0) == 1.0 and expected_tokens(0.0, 3) == 1.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


def test_batch_controller_starts_new_rows_from_the_batch_alpha_and_probes():
    """A joining row borrows the batch's measured acceptance (not the optimistic prior); with
    speculation off, a short probe comes after probe_every plain steps, then less often."""
    from specdec.control.batch import BatchGammaConfig

    controller = _batch_controller(a=1.0, b=0.1)
    for _ in range(40):  # the batch's drafts are mostly rejected
        controller.observe(32, 4.2, 16, 0.0, beta_sum=1.0, beta_count=16)
    assert controller.alpha < 0.1
    assert controller.row_alpha(0.0, 0) == controller.alpha
    assert controller.row_alpha(90.0, 100) > 0.8  # a row's own long record dominates
    config = BatchGammaConfig()
    widths = [controller.choose([controller.row_alpha(0.0, 0)] * 4, [16] * 4)
              for _ in range(3 * config.probe_every + 3)]
    probes = [i for i, w in enumerate(widths) if w > 0]
    assert probes[:2] == [config.probe_every, 3 * config.probe_every + 1]  # backing off
    assert all(widths[i] == config.probe_gamma for i in probes)


def test_batch_controller_keeps_speculation_only_where_it_measured_faster():
    """The model says drafting pays (cheap forward, high alpha); measured whole steps say
    otherwise at 8 rows and agree at 2: plain at 8 rows, drafts at 2, each side retried."""
    controller = _batch_controller(a=1.0, b=0.001)
    alphas = [0.9] * 8
    assert controller.model_width(alphas, [16] * 8) > 0
    assert controller.choose(alphas, [16] * 8) == 0  # plain measured first
    controller.observe_step(8, False, 80, 1.0)
    controller.observe_step(8, False, 80, 1.0)
    assert controller.choose(alphas, [16] * 8) > 0  # then speculation
    controller.observe_step(8, True, 60, 2.0)
    widths = [controller.choose(alphas, [16] * 8) for _ in range(12)]
    assert widths.count(0) >= 11  # 30 tok/s speculating against 80 plain
    for _ in range(3):
        controller.observe_step(2, False, 20, 1.0)
        controller.observe_step(2, True, 60, 1.0)
    assert controller.choose([0.9] * 2, [16] * 2) > 0
