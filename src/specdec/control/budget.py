"""A node budget for tree drafts, chosen from measured acceptance per depth and cost per width.

Each tree step the loop asks for a node budget B and a depth cap; the drafter proposes at most
B nodes no deeper than the cap, and one target forward verifies them. Per request the
controller keeps, for every budget B it has used (exponentially smoothed over steps):

  reach_B(d)  how often the accepted path reached depth d (d = 1, 2, ...); the accepted tokens
              per step are E_B = sum_d reach_B(d);
  size_B      the nodes actually verified (a drafter may propose fewer than B);

and, through the line controller it extends (auto.GammaController, whose ModelCosts may be
shared by every generation), the target's time per verified width (the tree forward's own
time where that width was seen, else the fitted line a + b*k), the drafter's time per step as
a line in its nodes, and the pooled per-position acceptance alpha. It chooses

    B = argmax over the budget ladder of  (1 + E_B) / (v(size_B) + d0 + c * size_B),

against plain decoding's 1 / v(0) = 1. A budget with few measured steps is shrunk toward a
line of B drafts at the pooled alpha (the line controller's model), so an untried budget is
tried when the model says it should win, and then judged by what it did. When no budget beats
plain decoding, it decodes plainly and probes with a small budget now and then, backing off
while probes fail (GammaController.choose), so it is never slower than plain by more than the
probes. The depth cap is one past the deepest depth the step budget's paths reach at least
`min_reach` of the time: nodes deeper than that would rarely be reached, so the drafter spends
them on width instead; reaching the cap raises it by one at the next step. The cap is asked for
the budget the step actually gives (`depth_cap(budget)`), not the one choose() last returned:
in a batch the batch policy sets every row's budget and choose() is not called.

Costs change (load, context length), and a width's time is only updated when that width is
verified: as in the line controller (auto.py, which this class extends), the time of a width not
verified lately fades (`stale_decay`), so the cost line follows the widths in use, and a plain
step is taken whenever the 1-token time has faded below `plain_weight` (about one step in 120
while speculating), so the baseline that speculation must beat is measured, not extrapolated
from wide forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.control.auto import ControllerConfig, GammaController, ModelCosts
from specdec.control.policy import FixedGamma, GammaPolicy, StepRecord
from specdec.theory import expected_tokens


@dataclass
class BudgetConfig(ControllerConfig):
    max_gamma: int = 32  # the largest node budget
    initial_gamma: int = 8
    probe_gamma: int = 4
    budgets: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 24, 32)  # the ladder chosen from
    budget_prior_steps: float = 2.0  # steps of the line model behind a budget's measurements
    min_reach: float = 0.05  # depths reached less often than this are not drafted
    min_cap_steps: float = 2.0  # a budget's measured steps before its depth cap applies


@dataclass
class BudgetStats:
    """Decayed counts of one budget's steps."""

    steps: float = 0.0
    nodes: float = 0.0  # verified nodes
    reached: list[float] = field(default_factory=list)  # [d - 1]: steps whose path reached d

    def add(self, nodes: int, depth: int, decay: float) -> None:
        self.steps = decay * self.steps + 1
        self.nodes = decay * self.nodes + nodes
        if len(self.reached) < depth:
            self.reached.extend([0.0] * (depth - len(self.reached)))
        self.reached = [decay * r + (1.0 if d < depth else 0.0)
                        for d, r in enumerate(self.reached)]

    def reach(self) -> list[float]:
        """reach(d) for d = 1.. (how often the path reached depth d)."""
        return [r / self.steps for r in self.reached] if self.steps > 1e-9 else []


@dataclass
class BudgetController(GammaController):
    """TreePolicy: choose() the node budget, depth_cap(budget) its depth,
    observe(StepRecord)."""

    config: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stats: dict[int, BudgetStats] = {}

    def observe(self, step: StepRecord) -> None:
        super().observe(step)
        # the budget the step was given (a line step's: its drafts), never the last choice,
        # which is stale in a batch (the batch policy chooses there)
        budget = step.drafted if step.budget is None else step.budget
        if budget > 0:
            self.stats.setdefault(budget, BudgetStats()).add(step.drafted, step.accepted,
                                                             self.config.decay)

    def depth_cap(self, budget: int) -> int:
        """The depth cap for a step of this node budget: one past the deepest depth its
        steps reached at least `min_reach` of the time (the budget itself until measured)."""
        stats = self.stats.get(budget)
        if stats is None or stats.steps < self.config.min_cap_steps:
            return budget
        reached = [d + 1 for d, r in enumerate(stats.reach()) if r >= self.config.min_reach]
        return max(1, min(budget, max(reached, default=0) + 1))

    # --- the model ------------------------------------------------------------------------

    def expected_accepted(self, budget: int) -> float:
        """E_B: measured accepted tokens per step, shrunk toward a line of `budget` drafts."""
        prior = expected_tokens(self.alpha, budget) - 1
        weight = self.config.budget_prior_steps
        stats = self.stats.get(budget, BudgetStats())
        measured = sum(stats.reach())
        return (stats.steps * measured + weight * prior) / (stats.steps + weight)

    def expected_size(self, budget: int) -> float:
        """Nodes a step with this budget verifies (the full budget until measured)."""
        weight = self.config.budget_prior_steps
        stats = self.stats.get(budget, BudgetStats())
        return (stats.nodes + weight * budget) / (stats.steps + weight)

    def rate(self, budget: int, costs: list[float]) -> float:
        """Expected tokens per 1-token target pass at this budget (plain decoding: 1 / v(0))."""
        if budget == 0:
            return 1.0 / costs[0]
        size = min(self.expected_size(budget), len(costs) - 1)
        low = int(size)
        high = min(low + 1, len(costs) - 1)
        verify = costs[low] + (costs[high] - costs[low]) * (size - low)
        seconds = verify + self.fixed_draft_cost + self.c * size
        return (1.0 + self.expected_accepted(budget)) / seconds

    def best_gamma(self) -> int:
        if self.costs.draft_time.weight <= 1e-9 or not self.costs.target_time:
            return self.config.initial_gamma
        costs = self.verify_costs()
        budgets = [b for b in self.config.budgets if 0 < b <= self.config.max_gamma]
        return max([0, *budgets], key=lambda b: self.rate(b, costs))


@dataclass
class AutoPolicies:
    """What `auto` means: GammaController for lines (calling this gives one), BudgetController
    for trees (`trees()`). Each kind shares its own ModelCosts across generations: a tree's
    forward costs more than a line of as many tokens, so their timings are kept apart."""

    line_config: ControllerConfig = field(default_factory=ControllerConfig)
    tree_config: BudgetConfig = field(default_factory=BudgetConfig)
    line_costs: ModelCosts = field(default_factory=ModelCosts)
    tree_costs: ModelCosts = field(default_factory=ModelCosts)

    def __call__(self) -> GammaController:
        return GammaController(self.line_config, self.line_costs)

    def trees(self) -> BudgetController:
        return BudgetController(self.tree_config, self.tree_costs)


def tree_policy(gamma: object) -> GammaPolicy:
    """The policy of one tree-decoded generation from a decoder's gamma (an int, `auto`'s
    AutoPolicies, or any other factory of GammaPolicy, used as it is)."""
    if isinstance(gamma, int):
        return FixedGamma(gamma)
    if isinstance(gamma, AutoPolicies):
        return gamma.trees()
    assert callable(gamma)
    return gamma()
