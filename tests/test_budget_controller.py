"""The node-budget controller for trees (control/budget.py): deterministic runs against
synthetic steps and costs, then through TreeDecoder on the tiny models (output unchanged)."""

from __future__ import annotations

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.batch import BatchDecoder
from specdec.control.auto import GammaController
from specdec.control.batch import BatchGammaController
from specdec.control.budget import AutoPolicies, BudgetConfig, BudgetController, tree_policy
from specdec.control.policy import FixedGamma, StepRecord, TreePolicy
from specdec.drafters.factory import build_drafter, build_gamma
from specdec.models import wrap
from specdec.runtime.rows import StaticRows
from tiny import tiny_llama
from tree_fixtures import RandomTrees


def run(controller: BudgetController, steps: int, reach, seconds) -> list[int]:
    """Drive the controller: a step with budget b verifies b nodes, accepts a path of
    reach(b, depth cap) tokens and takes seconds(b) (b = 0: a plain step). The chosen
    budgets."""
    chosen = []
    for _ in range(steps):
        budget = controller.choose()
        depth = controller.depth_cap(budget)
        accepted = reach(budget, depth) if budget else 0
        betas = [1.0] * accepted + ([0.0] if budget and accepted < budget else [])
        controller.observe(StepRecord(drafted=budget, accepted=accepted, betas=betas,
                                      drafter_s=1e-5 * budget, drafter_forwards=0,
                                      target_s=seconds(budget), budget=budget))
        chosen.append(budget)
    return chosen


def flat(budget: int) -> float:
    return 0.1 * (1 + 0.01 * budget)  # width nearly free (a GPU, or a big model)


def steep(budget: int) -> float:
    return 0.1 * (1 + 1.5 * budget)  # every node costs more than a token is worth


def deep(budget: int, depth: int) -> int:
    return min(budget, depth, 12)  # the tree holds the continuation to depth 12


def test_deep_acceptance_and_cheap_width_choose_a_large_budget():
    chosen = run(BudgetController(), 300, deep, flat)[-100:]
    speculated = [b for b in chosen if b]
    assert len(speculated) >= 98  # a plain step now and then measures the baseline
    assert min(speculated) >= 12  # reaching depth 12 needs at least 12 nodes
    shallow = run(BudgetController(), 300, lambda b, d: min(b, d, 2), flat)[-100:]
    assert max(shallow) < min(speculated)


def test_no_acceptance_decodes_plainly_with_probes():
    chosen = run(BudgetController(), 400, lambda b, d: 0, lambda b: 0.1 * (1 + 0.03 * b))
    last = chosen[-200:]
    assert last.count(0) >= 0.9 * len(last)
    assert any(last)  # probes go on (acceptance may rise)
    assert max(last) <= BudgetConfig().probe_gamma


def test_adapts_when_the_cost_of_width_changes():
    controller = BudgetController()
    cheap = run(controller, 300, deep, flat)
    assert min(b for b in cheap[-30:] if b) >= 12
    costly = run(controller, 300, deep, steep)
    last = costly[-100:]
    assert last.count(0) >= 0.85 * len(last)  # no budget beats plain at 1.5 passes a node


def test_depth_cap_follows_the_measured_reach():
    controller = BudgetController(BudgetConfig(budgets=(16,)))
    run(controller, 60, lambda b, d: min(b, d, 3), flat)
    assert controller.choose() == 16
    assert controller.depth_cap(16) == 4  # depth 3 reached every step: one more is tried
    run(controller, 60, lambda b, d: min(b, d, 6), flat)  # a deeper match appears
    assert controller.choose() == 16
    assert controller.depth_cap(16) == 7  # grew one depth at a time as paths reached the cap


def test_the_step_budget_keys_the_statistics():
    """A step capped below the chosen budget (max_draft_tokens, max_new_tokens) is counted
    under the budget it was given, not the one chosen."""
    controller = BudgetController()
    controller.choose()
    controller.observe(StepRecord(drafted=2, accepted=2, betas=[1.0, 1.0], drafter_s=0.0,
                                  drafter_forwards=0, target_s=0.1, budget=2))
    assert set(controller.stats) == {2}


def test_auto_means_lines_or_budgets_with_shared_timings():
    auto = build_gamma("auto")
    assert isinstance(auto, AutoPolicies)
    assert isinstance(auto(), GammaController) and not isinstance(auto(), TreePolicy)
    first, second = tree_policy(auto), tree_policy(auto)
    assert isinstance(first, BudgetController) and isinstance(first, TreePolicy)
    assert first.costs is second.costs and first.costs is not auto().costs
    assert isinstance(tree_policy(5), FixedGamma)


@pytest.fixture(scope="module")
def target():
    return wrap(tiny_llama())


PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 9, 10, 1, 2, 3, 4, 5, 6] * 3


class Recording(RandomTrees):
    """RandomTrees that records the (nodes, depth) each step asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: list[tuple[int, int]] = []

    def fork(self) -> Recording:
        twin = Recording(self.vocab, self.nodes, self.seed, self.truth, self.sampled,
                         self.truths)
        twin.asked = self.asked  # one record for every row of a batch
        return twin

    def propose_tree(self, context, nodes, depth, params, generator, history=None):
        self.asked.append((nodes, depth))
        return super().propose_tree(context, nodes, depth, params, generator, history)


def test_auto_tree_decoding_keeps_greedy_output(target):
    params = SamplingParams(temperature=0, max_new_tokens=40, ignore_eos=True)
    plain = SpeculativeDecoder(target, None, 0).generate(PROMPT, params)
    drafter = Recording(64, 32, seed=3, truth=plain.tokens)
    decoder = SpeculativeDecoder(target, drafter, build_gamma("auto"))
    out = decoder.generate(PROMPT, params)
    assert out.tokens == plain.tokens
    assert out.stats.tree_steps > 0
    assert all(0 < depth <= nodes for nodes, depth in drafter.asked)
    suffix = build_drafter("suffix", target, loader=None)  # type: ignore[arg-type]
    out = SpeculativeDecoder(target, suffix, build_gamma("auto")).generate(PROMPT, params)
    assert out.tokens == plain.tokens


class WidthFour(BatchGammaController):
    """A batch policy that gives every row 4 drafts."""

    def choose(self, alphas: list[float], wanted: list[int]) -> int:
        return min(4, max(wanted))


def shallow_at_four() -> BudgetController:
    """A controller whose budget-4 steps reached depth 1 only (its cap there: 2), and that
    never chose (its last budget is still the initial 8, never measured)."""
    controller = BudgetController()
    for _ in range(3):
        controller.observe(StepRecord(drafted=4, accepted=1, betas=[1.0, 0.0],
                                      drafter_s=1e-4, drafter_forwards=0, target_s=0.1,
                                      budget=4))
    return controller


def test_a_tree_row_in_a_batch_gets_the_depth_cap_of_its_step_budget(target):
    """With two rows the batch policy sets each row's budget and the row's own policy never
    chooses: the depth cap is still the one its policy measured for that budget."""
    drafter = Recording(64, 32, seed=3)
    loop = BatchDecoder(StaticRows(target, max_rows=2), drafter, shallow_at_four,
                        target.eos_token_ids, target.vocab_size, WidthFour())
    params = SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True)
    loop.add_many([(torch.tensor([PROMPT]), params), (torch.tensor([PROMPT[:20]]), params)])
    assert all(seq.trees for seq in loop.sequences)
    loop.step()
    assert drafter.asked == [(4, 2), (4, 2)]


@pytest.mark.parametrize("cap", [0, 2])
def test_max_draft_tokens_caps_the_tree_budget(target, cap):
    params = SamplingParams(temperature=0.8, seed=7, max_new_tokens=30, ignore_eos=True)
    plain = SpeculativeDecoder(target, None, 0).generate(PROMPT, params)
    drafter = Recording(64, 16, seed=1, truth=plain.tokens)
    capped = SamplingParams(temperature=0.8, seed=7, max_new_tokens=30, ignore_eos=True,
                            max_draft_tokens=cap)
    out = SpeculativeDecoder(target, drafter, 16).generate(PROMPT, capped)
    assert out.tokens == plain.tokens
    assert all(nodes <= cap for nodes, _ in drafter.asked)
    assert bool(drafter.asked) == (cap > 0)
    assert out.stats.drafted <= cap * out.stats.target_calls


def test_max_draft_tokens_is_validated():
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(ValueError, match="max_draft_tokens"):
            SamplingParams(max_draft_tokens=bad)
    assert SamplingParams(max_draft_tokens=64).max_draft_tokens == 64
