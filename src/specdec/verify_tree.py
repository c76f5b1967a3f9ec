"""Exact verification of a token tree: every rule of verify.py, for several candidates a node.

Pure tensor code. A tree of N nodes: node 0 is the root (the context's last token, already
decided), parents[i] < i for i > 0. Shapes: B rows verifying trees of the same shape,
  tokens        [N] or [B, N] node tokens (the root's is unused)
  target_probs  [B, N, V]  p after each node (the target's next-token law given its path)
  draft_probs   [B, N, V]  q_i: the law node i's token was drawn from, or None when every
                           candidate is deterministic (q_i one-hot at its token)
The walk starts at the root; at a node it tests the children in order, moves to the first
accepted one, and ends at a node where all children are rejected (or at a leaf) by emitting
one token from that node's final residual (the bonus from p at a leaf).

Greedy: accept the child equal to argmax p. Coupled (seeded): accept the child equal to the
target's Gumbel-max token at that node's absolute position; the emitted tokens are exactly
plain Gumbel-max sampling of the target, whatever the tree (same text as the line rule).

Sampled, several candidates at a node (Algorithm 1 repeated on residuals): with r_1 = p, child
j (token x_j ~ q_j) is accepted with probability min(1, r_j(x_j) / q_j(x_j)); on rejection
r_{j+1} = norm(max(0, r_j - q_j)); after the last child the token is drawn from r_{m+1}. Each
round is Algorithm 1 against the target r_j, so given that round j is reached, the token it
(or a later round) yields is distributed as r_j: min(r_j, q_j) + (1 - sum min(r_j, q_j))
r_{j+1} = r_j. By induction from r_{m+1} the node's token is distributed as p; by the chain
rule over depths the emitted sequence is distributed as the target's. This needs x_j ~ q_j
independently of the other candidates and of the verification's random numbers, given the
path: deterministic candidates (q_j one-hot: accept w.p. r_j(x_j), r_{j+1} = r_j without x_j,
renormalized) and candidates drawn i.i.d. with replacement from one q (SpecInfer's multi-step
speculative sampling, Miao et al. 2024; Yang et al. 2024, multi-candidate speculative
decoding) both qualify. Candidates drawn WITHOUT replacement do not: they need the recursive
rejection sampling of Jeong et al. 2024, not implemented. Duplicate deterministic siblings are
harmless: after rejecting x, r(x) = 0 and the duplicate is always rejected.

The sampled rule's randomness is counter-based, as the line rule's (verify_rows.py): the node
at depth d decides the token at absolute position t = start + d; child slot j's acceptance
uniform is U(h(key, t, -1 - j)) and the token emitted there is the Gumbel-max of its final
residual under noise h(key, t, x) (noise.py). The walk visits one node per depth and the next
step starts past the last position it decided, so every draw is fresh (the rule is exact),
and a seed means the same draws on any device, in any batch. A chain (one child per node)
draws exactly what the line rule draws: the same verdict, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from specdec.noise import (
    gumbel_argmax,
    keyed_gumbel_argmax,
    mix32_,
    row_position_keys,
    token_keys,
    uniforms,
)
from specdec.runtime.tree_attention import tree_depths
from specdec.verify import residual


@dataclass
class TreeVerdict:
    """Outcome of verifying one tree per row."""

    nodes: torch.Tensor  # [B, D] accepted nodes by depth (node at depth d + 1), -1 past the end
    accepted: torch.Tensor  # [B] number of accepted nodes
    next_token: torch.Tensor  # [B] residual sample at the last node, or the bonus at a leaf

    def path(self, row: int = 0) -> list[int]:
        """Row `row`'s accepted nodes, root excluded, in order."""
        return self.nodes[row, : int(self.accepted[row])].tolist()


@dataclass(frozen=True)
class TreeShape:
    """A tree's structure on the device: children per node, in order, padded with -1."""

    tokens: torch.Tensor  # [1, N], or [B, N] when rows drew different candidates
    children: torch.Tensor  # [N, F]
    depth: int  # deepest node's depth
    depths: torch.Tensor  # [N] each node's depth (the root's 0)

    @classmethod
    def of(cls, tokens: torch.Tensor | list[int], parents: list[int],
           device: torch.device | str = "cpu") -> TreeShape:
        if not parents or parents[0] != -1 or any(p < 0 for p in parents[1:]):
            raise ValueError("node 0 must be the only root (parents[0] == -1)")
        depths = tree_depths(parents)
        kids: list[list[int]] = [[] for _ in parents]
        for i, parent in enumerate(parents[1:], 1):
            kids[parent].append(i)
        fan = max(1, max(len(k) for k in kids))
        table = torch.full((len(parents), fan), -1, dtype=torch.long)
        for i, k in enumerate(kids):
            table[i, : len(k)] = torch.tensor(k, dtype=torch.long)
        ids = torch.as_tensor(tokens, dtype=torch.long).to(device)
        return cls(ids.view(-1, len(parents)), table.to(device), max(depths),
                   torch.tensor(depths, device=device))

    def child_tokens(self, kids: torch.Tensor) -> torch.Tensor:
        """Tokens of child nodes kids [B, F] (-1 padding reads node 0)."""
        return self.tokens.expand(kids.shape[0], -1).gather(1, kids.clamp_min(0))


# decide(current node per row [B]) -> (accepted flags [B, F] per child slot, and a sampler of
# the token emitted by the rows (a mask [B]) that stop at their current node)
Decide = Callable[[torch.Tensor], tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]


def _walk(shape: TreeShape, rows: int, decide: Decide) -> TreeVerdict:
    """Follow the first accepted child from the root down; emit where none is accepted."""
    device = shape.tokens.device
    cur = torch.zeros(rows, dtype=torch.long, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    nodes = torch.full((rows, shape.depth), -1, dtype=torch.long, device=device)
    next_token = torch.zeros(rows, dtype=torch.long, device=device)
    for d in range(shape.depth + 1):
        kids = shape.children[cur]  # [B, F]
        hit = decide(cur)
        accepted, final = hit[0] & (kids >= 0), hit[1]
        any_hit = accepted.any(dim=1)
        chosen = kids.gather(1, accepted.long().argmax(dim=1, keepdim=True))[:, 0]
        done = alive & ~any_hit
        if bool(done.any()):
            next_token = torch.where(done, final(done), next_token)
        alive = alive & any_hit
        if not bool(alive.any()):
            break
        nodes[:, d] = torch.where(alive, chosen, nodes[:, d])
        cur = torch.where(alive, chosen, cur)
    return TreeVerdict(nodes, (nodes >= 0).long().sum(dim=1), next_token)


def _matching(shape: TreeShape, target_tokens: torch.Tensor) -> TreeVerdict:
    """Accept the child whose token is the target's token y at the current node; emit y."""
    rows = target_tokens.shape[0]
    index = torch.arange(rows, device=target_tokens.device)

    def decide(cur: torch.Tensor):
        y = target_tokens[index, cur]
        kids = shape.children[cur]
        hit = shape.child_tokens(kids) == y[:, None]
        return hit, lambda _: y

    return _walk(shape, rows, decide)


def verify_tree_greedy(shape: TreeShape, target_logits: torch.Tensor) -> TreeVerdict:
    """Follow the child equal to the target's argmax: plain greedy decoding, token for token."""
    return _matching(shape, target_logits.argmax(dim=-1))


def verify_tree_coupled(shape: TreeShape, parents: list[int], target_probs: torch.Tensor,
                        seed: int, position: int) -> TreeVerdict:
    """Follow the child equal to the target's Gumbel-max token; the node at depth d draws the
    noise of absolute position `position` + d (position: of the first token the step emits),
    as the line rule does at its d-th row."""
    depths = torch.tensor(tree_depths(parents), device=target_probs.device)
    return _matching(shape, gumbel_argmax(target_probs, seed, position + depths))


def node_keys(shape: TreeShape, keys: list[int], start: int) -> torch.Tensor:
    """The position key of every node per row, int32 [B, N]: row i's key `keys[i]` at the
    absolute position its node decides (start + the node's depth)."""
    positions = (start + shape.depths).expand(len(keys), -1)
    return row_position_keys(keys, positions)


def child_uniforms(keys: torch.Tensor, fan: int) -> torch.Tensor:
    """The acceptance uniforms of child slots 0..fan-1 at nodes with position keys [B]:
    [B, fan] float64, slot j's drawn with "token" -1 - j (no real id: independent of the
    Gumbel noise of the token emitted there; slot 0's is the line rule's ACCEPT_ID)."""
    slots = token_keys(-1 - torch.arange(fan, device=keys.device))
    return uniforms(mix32_(keys[:, None].bitwise_xor(slots)))


def verify_tree(shape: TreeShape, draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
                keys: list[int], start: int) -> TreeVerdict:
    """Algorithm 1 over the tree, children tested in turn against the residuals (module
    docstring: exact for deterministic candidates and for i.i.d. sampled ones). keys: each
    row's stream key; start: the absolute position of the token the root decides."""
    rows = target_probs.shape[0]
    device = target_probs.device
    index = torch.arange(rows, device=device)
    fan = shape.children.shape[1]
    at = node_keys(shape, keys, start)

    def decide(cur: torch.Tensor):
        kids = shape.children[cur]  # [B, F]
        r = target_probs[index, cur]  # r_1 = p
        tokens = shape.child_tokens(kids)
        ratios = []
        for j in range(fan):
            child = kids[:, j]
            valid = child >= 0
            safe = child.clamp_min(0)
            x = tokens[:, j]
            r_x = r.gather(1, x[:, None])[:, 0]
            if draft_probs is None:  # one-hot q: accept w.p. r(x), residual = r without x
                q = torch.zeros_like(r).scatter_(1, x[:, None], 1.0)
                ratio = r_x
            else:
                q = draft_probs[index, safe]
                q_x = q.gather(1, x[:, None])[:, 0]
                ratio = torch.where(q_x > 0, r_x / q_x.clamp_min(1e-38), torch.zeros_like(r_x))
            ratios.append(torch.where(valid, ratio, torch.zeros_like(ratio)))
            r = torch.where(valid[:, None], residual(r, q), r)
        here = at[index, cur]
        # U in (0, 1): U < ratio has probability min(1, ratio); ratio 0 always rejects
        hit = child_uniforms(here, fan) < torch.stack(ratios, 1)
        final = r  # the residual after every child (p itself at a leaf)

        def draw(done: torch.Tensor) -> torch.Tensor:
            return keyed_gumbel_argmax(final, here)

        return hit, draw

    return _walk(shape, rows, decide)
