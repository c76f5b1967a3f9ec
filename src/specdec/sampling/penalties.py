"""Repetition, frequency and presence penalties and logit bias: logits that depend on the
tokens so far. Every position of a draft block is penalized with the history that includes
the drafts before it, so target and drafter see the same adjusted distribution."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from specdec.sampling.params import SamplingParams


@dataclass(frozen=True)
class TokenHistory:
    """What the penalties look at, per row: tokens seen in the prompt or the output (the
    repetition penalty, as transformers and vLLM) and how often each occurs in the output
    (frequency and presence penalties, as OpenAI and vLLM).

    ids lists every token seen in some row (repeats allowed): penalties touch those columns
    only, so their cost grows with the context, not with the vocabulary times the block.
    """

    seen: torch.Tensor  # [B, V] bool
    counts: torch.Tensor  # [B, V] float32
    ids: torch.Tensor  # [S] int64

    @staticmethod
    def of(context: torch.Tensor, output_start: int, vocab_size: int) -> TokenHistory:
        """The history of context [B, T] whose output begins at position output_start."""
        rows = context.shape[0]
        seen = torch.zeros(rows, vocab_size, dtype=torch.bool, device=context.device)
        seen.scatter_(1, context, True)
        output = context[:, output_start:]
        counts = torch.zeros(rows, vocab_size, device=context.device)
        counts.scatter_add_(1, output, torch.ones_like(output, dtype=counts.dtype))
        # unique() on a GPU would wait for it; repeated ids are harmless
        ids = context.unique() if context.device.type == "cpu" else context.flatten()
        return TokenHistory(seen, counts, ids)

    def plus(self, tokens: torch.Tensor) -> TokenHistory:
        """This history followed by output tokens [B, m]."""
        if tokens.shape[1] == 0:
            return self
        tokens = tokens.to(self.counts.device)
        counts = self.counts.scatter_add(1, tokens, torch.ones_like(tokens,
                                                                    dtype=self.counts.dtype))
        return TokenHistory(self.seen.scatter(1, tokens, True), counts,
                            torch.cat([self.ids, tokens.flatten()]))


def penalize(logits: torch.Tensor, params: SamplingParams, history: TokenHistory,
             drafts: torch.Tensor | None = None,
             columns: torch.Tensor | None = None) -> torch.Tensor:
    """logit_bias, then the repetition, frequency and presence penalties (vLLM's order).

    logits [B, V] or [B, n, V], returned in float32 (a new tensor). Position j of a block sees
    `history` followed by drafts[:, :j] (drafts [B, n-1]), so each position of a verified
    draft block gets the history its own prefix has. columns: the token ids of logits' last
    dimension when it covers only part of the vocabulary (the cross-tokenizer drafter).
    """
    vocab = history.counts.shape[-1]
    if columns is not None:  # through the full vocabulary: one code path for the rules
        columns = columns.to(logits.device)
        full = torch.full((*logits.shape[:-1], vocab), -math.inf, device=logits.device)
        full[..., columns] = logits.float()
        return penalize(full, params, history, drafts)[..., columns]
    single = logits.ndim == 2
    out = (logits[:, None] if single else logits).float().clone()
    device = out.device
    if params.logit_bias:
        ids, values = zip(*params.logit_bias, strict=True)
        out[..., torch.tensor(ids, device=device)] += torch.tensor(values, device=device)
    rep, freq, pres = params.repetition_penalty, params.frequency_penalty, params.presence_penalty
    if rep != 1 or freq or pres:
        out = _penalize_seen(out, history, drafts, rep, freq, pres)
    return out[:, 0] if single else out


def _penalize_seen(out: torch.Tensor, history: TokenHistory, drafts: torch.Tensor | None,
                   rep: float, freq: float, pres: float) -> torch.Tensor:
    """The penalties on the columns of tokens seen so far (history, then the drafts)."""
    device, n = out.device, out.shape[1]
    ids = history.ids.to(device)
    ahead = None
    if drafts is not None and n > 1:
        ahead = drafts[:, : n - 1].to(device)  # position j sees ahead[:, :j]
        if ahead.shape[1] != n - 1:
            raise ValueError(f"{n} positions need {n - 1} drafts, got {ahead.shape[1]}")
        ids = torch.cat([ids, ahead.flatten()])
    seen = history.seen.to(device)[:, ids][:, None]  # [B, 1, S]
    counts = history.counts.to(device)[:, ids][:, None]
    if ahead is not None:
        # occurrences among drafts[:, :j] of each column, for j = 0..n-1: [B, n, S]
        found = (ahead[..., None] == ids).float().cumsum(dim=1)
        found = torch.cat([torch.zeros_like(found[:, :1]), found], dim=1)
        counts, seen = counts + found, seen | (found > 0)
    sub = out[..., ids]  # [B, n, S]; a repeated id gets the same values, written back twice
    if rep != 1:
        sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
    if freq or pres:
        sub = sub - freq * counts - pres * (counts > 0).float()
    out[..., ids] = sub
    return out


