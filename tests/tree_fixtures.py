"""Test drafters that propose branching trees of deterministic candidates."""

from __future__ import annotations

import torch

from specdec.drafters.base import Drafter, Proposal
from specdec.drafters.tree import DraftTree


class RandomTrees(Drafter):
    """Random trees of random tokens; with `truth` (the text the target will produce after
    the prompt), the true continuation hides among decoys at random sibling positions, so
    accepted paths run through later children and their keys and values must be moved."""

    def __init__(self, vocab: int, nodes: int = 8, seed: int = 0,
                 truth: list[int] | None = None, sampled: bool = False,
                 truths: dict[tuple[int, ...], list[int]] | None = None):
        """sampled: report the tokens as drawn i.i.d. from the uniform law (they are, without
        `truth`), so verification uses q = 1/vocab instead of one-hot. truths: the truth per
        prompt (for batches: each row's fork looks its prompt up at `begin`)."""
        self.vocab, self.nodes, self.seed, self.truth = vocab, nodes, seed, truth
        self.sampled, self.truths = sampled, truths
        self.name = "random-trees"
        self.prompt_length = 0
        self.generator = torch.Generator()

    def fork(self) -> RandomTrees:
        return RandomTrees(self.vocab, self.nodes, self.seed, self.truth, self.sampled,
                           self.truths)

    def begin(self, prompt_ids: torch.Tensor) -> None:
        self.prompt_length = prompt_ids.shape[1]
        self.generator.manual_seed(self.seed)
        if self.truths is not None:
            self.truth = self.truths[tuple(prompt_ids[0].tolist())]

    def propose(self, context, gamma, params, generator, history=None) -> Proposal:
        return self.propose_tree(context, gamma, gamma, params, generator).line()

    def propose_tree(self, context, nodes, depth, params, generator, history=None) -> DraftTree:
        nodes = min(nodes, self.nodes)
        # sampled: fresh draws per request from the request's generator (a drafter's own
        # generator, reset by begin, would draw the same tokens every request: not x ~ q)
        gen = generator if self.sampled else self.generator
        tokens: list[int] = []
        parents: list[int] = []
        levels: list[int] = []
        true_node = -1  # the deepest node on the true path so far
        done = context.shape[1] - self.prompt_length
        for _ in range(nodes):
            choices = [i for i in range(-1, len(tokens)) if (levels[i] if i >= 0 else -1)
                       < depth - 1]
            parent = choices[int(torch.randint(len(choices), (1,), generator=gen))]
            level = (levels[parent] if parent >= 0 else -1) + 1
            token = int(torch.randint(self.vocab, (1,), generator=gen))
            if self.truth is not None and parent == true_node and \
                    float(torch.rand(1, generator=gen)) < 0.5 and \
                    done + level < len(self.truth):
                token, true_node = self.truth[done + level], len(tokens)
            tokens.append(token)
            parents.append(parent)
            levels.append(level)
        probs = torch.full((1, len(tokens), self.vocab), 1.0 / self.vocab) if self.sampled \
            else None
        return DraftTree(torch.tensor([tokens], dtype=torch.long).view(1, -1), parents, probs)
