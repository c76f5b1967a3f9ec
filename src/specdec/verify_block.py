"""Block verification (Sun, Mendlovic, Leviathan, Aharoni, Ro, Beirami & Suresh, "Block
Verification Accelerates Speculative Decoding", ICLR 2025, Algorithm 2): the draft block is
accepted jointly, never fewer tokens in expectation than Algorithm 1's token-by-token rule,
and the output is distributed exactly as the target's.

With drafts x_1..x_k, q_i the law x_i was drawn from and p_i the target's at that position
(p_{k+1} after the block), and weights w_0 = 1, w_i = min(1, w_{i-1} p_i(x_i) / q_i(x_i)):
  s_i = sum_x max(w_i p_{i+1}(x) - q_{i+1}(x), 0)
  h_i = s_i / (s_i + 1 - w_i) for i < k (1 where that is 0/0: w_i = 1, p = q), h_k = w_k
  tau = the largest i in 1..k with eta_i < h_i (0 if none), eta_i ~ U(0, 1) independent
  emit x_1..x_tau, then a token from p_{k+1} if tau = k, else from
  norm(max(w_tau p_{tau+1} - q_{tau+1}, 0)).
Every eta is read, not only those up to a rejection, so the caller keys them by draft offset
as well as position (verify_rows.py): the next step's uniforms are fresh.

Pure tensor code over rows of ragged lengths: drafts [B, K], q [B, K, V] (one-hot rows for
deterministic drafts), p [B, K + 1, V], lengths [B] (k_i <= K), eta [B, K].
"""

from __future__ import annotations

import torch


def block_weights(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """w_0..w_K per row, [B, K + 1] (w_i = min(1, w_{i-1} p_i(x_i) / q_i(x_i)))."""
    k = drafts.shape[1]
    p_x = p[:, :k].gather(-1, drafts[..., None])[..., 0]
    q_x = q.gather(-1, drafts[..., None])[..., 0]
    # q(x) = 0 cannot happen for x ~ q; if a drafter claims it anyway, the weight drops to 0
    ratio = torch.where(q_x > 0, p_x / q_x.clamp_min(1e-38), torch.zeros_like(p_x))
    weights = [p.new_ones(p.shape[0])]
    for i in range(k):
        weights.append(torch.clamp(weights[-1] * ratio[:, i], max=1.0))
    return torch.stack(weights, dim=1)


def block_thresholds(weights: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
    """h_1..h_K per row, [B, K]; 0 past a row's length (never chosen)."""
    k = q.shape[1]
    inner = weights[:, 1:k]  # w_1..w_{K-1}
    mass = (inner[..., None] * p[:, 1:k] - q[:, 1:k]).clamp_min(0).sum(dim=-1)
    denominator = mass + (1 - inner)
    h = torch.where(denominator > 0, mass / denominator.clamp_min(1e-38),
                    torch.ones_like(mass))
    h = torch.cat([h, torch.zeros_like(weights[:, :1])], dim=1)  # [B, K]
    offsets = torch.arange(k, device=q.device)
    h = torch.where(offsets == (lengths - 1)[:, None], weights[:, 1:], h)  # h_k = w_k
    return torch.where(offsets < lengths[:, None], h, torch.zeros_like(h))


def block_next(weights: torch.Tensor, q: torch.Tensor, p: torch.Tensor, accepted: torch.Tensor,
               lengths: torch.Tensor) -> torch.Tensor:
    """The law of the token after x_1..x_tau, [B, V]: p_{k+1} when the whole block is kept,
    else norm(max(w_tau p_{tau+1} - q_{tau+1}, 0)) (p_{tau+1} itself should float round-off
    leave it no mass)."""
    rows, k = q.shape[0], q.shape[1]
    index = torch.arange(rows, device=p.device)
    p_next = p[index, accepted]
    if k == 0:
        return p_next
    q_next = q[index, accepted.clamp_max(k - 1)]
    leftover = (weights[index, accepted][:, None] * p_next - q_next).clamp_min(0)
    total = leftover.sum(dim=-1, keepdim=True)
    leftover = torch.where(total > 0, leftover / total.clamp_min(1e-38), p_next)
    return torch.where((accepted == lengths)[:, None], p_next, leftover)


def verify_block(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor, lengths: torch.Tensor,
                 eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tau per row [B] and the law of the token emitted after x_1..x_tau [B, V]."""
    rows, k = drafts.shape
    if k == 0:
        return torch.zeros(rows, dtype=torch.long, device=p.device), p[:, 0]
    weights = block_weights(drafts, q, p)
    h = block_thresholds(weights, q, p, lengths)
    offsets = torch.arange(1, k + 1, device=p.device)
    accepted = torch.where(eta < h, offsets, torch.zeros_like(offsets)).max(dim=1).values
    return accepted, block_next(weights, q, p, accepted, lengths)
