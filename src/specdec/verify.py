"""Algorithm 1's accept/reject rule, vectorised over batch rows and the gamma draft positions.

Pure tensor code. Shapes: B rows, k drafted tokens, V vocabulary entries.
  draft_tokens  [B, k]      x_1..x_k
  draft_probs   [B, k, V]   q_1..q_k, or None for a deterministic drafter (q = one-hot at x_i)
  target_probs  [B, k+1, V] p_1..p_{k+1}
Rows are independent: each gets its own number accepted (ragged acceptance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.noise import gumbel_argmax
from specdec.sampling import sample


@dataclass
class Verdict:
    """Outcome of verifying one block of drafts per row."""

    accepted: torch.Tensor  # [B] int64, n = number of leading drafts kept (0..k)
    next_token: torch.Tensor  # [B] int64, residual sample if n < k, bonus from p_{k+1} if n == k

    def emitted(self, draft_tokens: torch.Tensor, row: int = 0) -> list[int]:
        """Tokens that row `row` appends: x_1..x_n, then the correction or bonus token."""
        n = int(self.accepted[row])
        return draft_tokens[row, :n].tolist() + [int(self.next_token[row])]


def acceptance_ratio(
    draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor
) -> torch.Tensor:
    """p_i(x_i) / q_i(x_i) for every draft position, [B, k]. Exceeds 1 where p > q."""
    p_x = target_probs[:, : draft_tokens.shape[1]].gather(-1, draft_tokens.unsqueeze(-1))[..., 0]
    if draft_probs is None:  # deterministic draft: q_i(x_i) = 1
        return p_x
    q_x = draft_probs.gather(-1, draft_tokens.unsqueeze(-1))[..., 0]
    # q(x) = 0 cannot happen for x ~ q; if a drafter claims it anyway, reject (ratio 0).
    return torch.where(q_x > 0, p_x / q_x.clamp_min(1e-38), torch.zeros_like(p_x))


def count_accepted(ratio: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """n = number of leading positions with r_i < p_i/q_i (accept w.p. min(1, p/q)). [B]."""
    # r in [0, 1): r < ratio has probability min(1, ratio) exactly, and ratio 0 always rejects.
    keep = uniforms < ratio
    return keep.long().cumprod(dim=-1).sum(dim=-1)


def residual(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dim. Falls back to p where p <= q everywhere.

    That fallback is only reached through float round-off: a rejection has probability
    1 - sum(min(p, q)), which is 0 when p == q.
    """
    leftover = (target_probs - draft_probs).clamp_min(0)
    mass = leftover.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, leftover / mass.clamp_min(1e-38), target_probs)


def verify(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Speculative sampling (Algorithm 1): accepted count and next token for every row.

    The emitted tokens are distributed exactly as sampling from target_probs autoregressively.
    """
    rows, k = draft_tokens.shape
    device = target_probs.device
    uniforms = torch.rand(rows, k, generator=generator, device=device)
    accepted = count_accepted(acceptance_ratio(draft_tokens, draft_probs, target_probs), uniforms)
    row_index = torch.arange(rows, device=device)
    p_next = target_probs[row_index, accepted]  # p_{n+1}, [B, V]
    if k == 0:
        return Verdict(accepted, sample(p_next, generator))
    rejected_at = accepted.clamp_max(k - 1)
    if draft_probs is None:
        q_next = torch.zeros_like(p_next)
        q_next[row_index, draft_tokens[row_index, rejected_at]] = 1.0
    else:
        q_next = draft_probs[row_index, rejected_at]
    all_accepted = (accepted == k).unsqueeze(-1)
    next_probs = torch.where(all_accepted, p_next, residual(p_next, q_next))
    return Verdict(accepted, sample(next_probs, generator))


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """The one-hot special case: keep drafts while they equal the target's argmax.

    Equals `verify` with p and q one-hot, without drawing any random numbers.
    """
    return _match(draft_tokens, target_logits.argmax(dim=-1))


def verify_coupled(draft_tokens: torch.Tensor, target_probs: torch.Tensor, seed: int,
                   positions: torch.Tensor) -> Verdict:
    """The coupled rule: keep drafts while they equal the target's Gumbel-max token.

    y_i = argmax_x log p_i(x) + G_{t_i}(x) with the noise of `seed` at positions t_1..t_{k+1}
    [k+1] (absolute token positions; noise.gumbel_argmax). Emits y_1..y_n, y_{n+1}: plain
    Gumbel-max sampling of the target, token for token, whatever was drafted. No q needed:
    the drafts only decide how many of the y are emitted by this one step.
    """
    return _match(draft_tokens, gumbel_argmax(target_probs, seed, positions))


def _match(draft_tokens: torch.Tensor, target_tokens: torch.Tensor) -> Verdict:
    """Accept while x_i == y_i; the next token is y at the first mismatch (or y_{k+1})."""
    k = draft_tokens.shape[1]
    accepted = (draft_tokens == target_tokens[:, :k]).long().cumprod(dim=-1).sum(dim=-1)
    next_token = target_tokens.gather(1, accepted.unsqueeze(-1))[:, 0]
    return Verdict(accepted, next_token)


def overlap(target_probs: torch.Tensor, draft_probs: torch.Tensor | None,
            draft_tokens: torch.Tensor) -> torch.Tensor:
    """beta = sum_x min(p(x), q(x)) = 1 - TV(p, q) per draft position, [B, k]."""
    k = draft_tokens.shape[1]
    if draft_probs is None:
        return target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1))[..., 0]
    # a float32 sum of probabilities can land a rounding step above 1
    return torch.minimum(target_probs[:, :k], draft_probs).sum(dim=-1).clamp(max=1.0)
