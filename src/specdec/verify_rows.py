"""Verification of every batch row in one vectorized call, read back in one host sync.

A batch step verifies B rows, each with its own draft length k_i <= K (drafts padded to K),
its own rule and its own randomness:
  greedy   keep drafts while they equal the target's argmax (verify.verify_greedy);
  coupled  keep drafts while they equal the target's Gumbel-max token under the request's
           seed (verify.verify_coupled): bit for bit the per-row rule, seeds per row;
  sample   Algorithm 1 (verify.verify) with counter-based randomness instead of a torch
           generator: the acceptance uniform for position t is U(h(stream, t, ACCEPT_ID)) and
           the residual or bonus token at position t is the Gumbel-max of its distribution
           under noise h(stream, t, x) (noise.py's hash, `stream` a per-row key). A position's
           uniform and noise are used by at most one step (a step uses positions start..
           start + n and the next starts at start + n + 1; the uniforms past the rejection it
           did not read), so every draw is fresh: the rule is exact, and one kernel serves
           every row, where per-row generators need a call (and a sync) per row.
  block    block verification (verify_block.py): the same noise, except that draft offset i's
           uniform is U(h(stream, start + i, -2 - i)): the rule reads every uniform of its
           block, and keying them by offset too makes the next step's (its start past this
           step's) fresh: a step's (position, offset) pairs determine its start.
Shapes: drafts [B, K], draft_probs [B, K, V] or None, target_probs [B, K + 1, V] (each row's
adjusted distribution, penalties applied; a greedy row's argmax is taken from it).
Pure tensor code; nothing here reads a device value back except `RowsVerdict.to_host`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.acceptance import RULES, AcceptanceRule
from specdec.noise import keyed_gumbel_argmax, mix32_, row_position_keys, token_keys, uniforms
from specdec.verify import residual
from specdec.verify_block import verify_block

ACCEPT_ID = -1  # the acceptance uniform's "token": no real id, so independent of the noise


@dataclass(frozen=True)
class RowRules:
    """What each row verifies with (host values: nothing here is read from a device).

    lengths: drafts k_i of row i (<= K). rules: RULES per row. keys: a coupled row's seed, a
    sample row's stream key (a per-row 63-bit key drawn once, e.g. from the request's
    generator), ignored for greedy rows. starts: absolute position of the first token this
    step emits, per row. has_q: whether row i's drafter gave draft probabilities (else its
    drafts are deterministic: q one-hot at the draft).
    """

    lengths: list[int]
    rules: list[str]
    keys: list[int]
    starts: list[int]
    has_q: list[bool]

    def __post_init__(self) -> None:
        sizes = {len(self.lengths), len(self.rules), len(self.keys), len(self.starts),
                 len(self.has_q)}
        if len(sizes) != 1:
            raise ValueError(f"one entry per row in every field, got sizes {sorted(sizes)}")
        unknown = set(self.rules) - set(RULES)
        if unknown:
            raise ValueError(f"unknown rules {sorted(unknown)} (known: {', '.join(RULES)})")


@dataclass
class RowsVerdict:
    """Per row: accepted count n_i, the next token, and beta_i per draft position."""

    accepted: torch.Tensor  # [B] int64
    next_token: torch.Tensor  # [B] int64
    betas: torch.Tensor  # [B, K] float32: sum min(p, q), or p(x) for deterministic drafts

    def to_host(self, drafts: torch.Tensor, lengths: list[int],
                ) -> list[tuple[int, int, list[int], list[float]]]:
        """(n, next token, drafts, betas) per row, cut to its k_i, in ONE device-to-host copy
        (token ids are exact in float64)."""
        rows, k = drafts.shape
        values = torch.cat([self.accepted.double()[:, None], self.next_token.double()[:, None],
                            drafts.double(), self.betas.double()], dim=1).tolist()
        return [(int(v[0]), int(v[1]), [int(x) for x in v[2:2 + n]], v[2 + k:2 + k + n])
                for v, n in zip(values, lengths, strict=True)]


def verify_rows(drafts: torch.Tensor, draft_probs: torch.Tensor | None,
                target_probs: torch.Tensor, rules: RowRules) -> RowsVerdict:
    """Every row's verdict in one pass (see the module docstring for the rules)."""
    rows, k = drafts.shape
    device = target_probs.device
    lengths = torch.tensor(rules.lengths, device=device)
    valid = torch.arange(k, device=device) < lengths[:, None]  # [B, K]: real drafts
    positions = torch.tensor(rules.starts, device=device)[:, None] + \
        torch.arange(k + 1, device=device)  # [B, K + 1]
    keys = row_position_keys(rules.keys, positions)
    kind = torch.tensor([RULES.index(r) for r in rules.rules], device=device)[:, None]
    has_q = torch.tensor(rules.has_q, device=device)

    # greedy and coupled rows: the target's own token at every position (the noise only
    # where a row needs it: the rules are host values, so deciding costs no sync)
    chosen = target_probs.argmax(dim=-1)
    if "coupled" in rules.rules:
        chosen = torch.where(kind == RULES.index("coupled"),
                             keyed_gumbel_argmax(target_probs, keys), chosen)
    match = (drafts == chosen[:, :k]) & valid

    # sample rows: accept x_i with probability min(1, p_i(x_i) / q_i(x_i))
    p_x = target_probs[:, :k].gather(-1, drafts[..., None])[..., 0]
    if draft_probs is None:
        q_x = torch.ones_like(p_x)
    else:
        q_x = torch.where(has_q[:, None], draft_probs.gather(-1, drafts[..., None])[..., 0],
                          1.0)
    ratio = torch.where(q_x > 0, p_x / q_x.clamp_min(1e-38), torch.zeros_like(p_x))
    accept_keys = token_keys(torch.tensor([ACCEPT_ID], device=device))
    u = uniforms(mix32_(keys[:, :k].bitwise_xor(accept_keys)))
    keep = torch.where(kind == RULES.index("sample"), u < ratio, match) & valid
    accepted = keep.long().cumprod(dim=-1).sum(dim=-1)

    index = torch.arange(rows, device=device)
    p_next = target_probs[index, accepted]  # p_{n+1}, [B, V]
    rejected_at = torch.minimum(accepted, (lengths - 1).clamp_min(0))
    if k == 0:
        next_probs = p_next
    else:
        q_next = torch.zeros_like(p_next)
        q_next[index, drafts[index, rejected_at]] = 1.0
        if draft_probs is not None:
            q_next = torch.where(has_q[:, None], draft_probs[index, rejected_at], q_next)
        next_probs = torch.where((accepted == lengths)[:, None], p_next,
                                 residual(p_next, q_next))
    if "block" in rules.rules:
        is_block = kind[:, 0] == RULES.index("block")
        q_full = torch.zeros_like(target_probs[:, :k]).scatter_(-1, drafts[..., None], 1.0)
        if draft_probs is not None:
            q_full = torch.where(has_q[:, None, None], draft_probs, q_full)
        offsets = token_keys(-2 - torch.arange(k, device=device))
        eta = uniforms(mix32_(keys[:, :k].bitwise_xor(offsets)))
        tau, block_probs = verify_block(drafts, q_full, target_probs, lengths, eta)
        accepted = torch.where(is_block, tau, accepted)
        next_probs = torch.where(is_block[:, None], block_probs, next_probs)
    next_token = chosen[index, accepted]
    if "sample" in rules.rules or "block" in rules.rules:
        sampled = keyed_gumbel_argmax(next_probs, keys[index, accepted])
        drawn = (kind[:, 0] == RULES.index("sample")) | (kind[:, 0] == RULES.index("block"))
        next_token = torch.where(drawn, sampled, next_token)
    return RowsVerdict(accepted, next_token, _betas(drafts, draft_probs, target_probs, has_q))


def _betas(drafts: torch.Tensor, draft_probs: torch.Tensor | None,
           target_probs: torch.Tensor, has_q: torch.Tensor) -> torch.Tensor:
    """beta per draft position (verify.overlap, per row: with or without a q)."""
    k = drafts.shape[1]
    p = target_probs[:, :k]
    p_x = p.gather(-1, drafts[..., None])[..., 0]
    if draft_probs is None:
        return p_x
    # a float32 sum of probabilities can land a rounding step above 1
    both = torch.minimum(p, draft_probs).sum(dim=-1).clamp(max=1.0)
    return torch.where(has_q[:, None], both, p_x)


@dataclass
class RowCheck:
    """One row's verification inputs (Sequence.prepare), on the target's device.

    drafts [k], draft_probs [k, V] or None (deterministic drafts, or a greedy row),
    target_probs [k + 1, V] (penalties and filters applied; one-hot for a greedy row); rule:
    the request's (its name and key go to RowRules); start as in RowRules.
    """

    drafts: torch.Tensor
    draft_probs: torch.Tensor | None
    target_probs: torch.Tensor
    rule: AcceptanceRule
    start: int


RowResult = tuple[int, int, list[int], list[float]]  # n, next token, drafts, betas


def verify_checks(checks: list[RowCheck]) -> list[RowResult]:
    """Every row's (n, next token, drafts, betas): one verify_rows call over the rows padded
    to the longest (zeros: padding is never read as a draft or an emitted position), and
    one host sync. A row's result does not depend on the other rows."""
    if not checks:
        return []
    pad = torch.nn.utils.rnn.pad_sequence
    drafts = pad([c.drafts for c in checks], batch_first=True)
    target = pad([c.target_probs for c in checks], batch_first=True)
    has_q = [c.draft_probs is not None for c in checks]
    draft_probs = None
    if any(has_q):
        draft_probs = pad([c.target_probs.new_zeros(c.target_probs.shape[0] - 1,
                                                    c.target_probs.shape[1])
                           if c.draft_probs is None else c.draft_probs for c in checks],
                          batch_first=True)
    lengths = [c.drafts.shape[0] for c in checks]
    rules = RowRules(lengths, [c.rule.name for c in checks], [c.rule.key for c in checks],
                     [c.start for c in checks], has_q)
    return verify_rows(drafts, draft_probs, target, rules).to_host(drafts, lengths)
