"""Sampling parameters and the logits -> adjusted distribution map shared by target and drafter.

Pure tensor functions: nothing here knows about models. Speculative sampling is exact for the
*adjusted* distribution, so the target's p and the drafter's q both go through `adjusted_probs`,
after `penalize` when the request has penalties: those depend on the tokens so far, so every
position of a draft block is penalized with the history that includes the drafts before it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from specdec.constraint import Constraint
from specdec.errors import InvalidParameter


@dataclass(frozen=True)
class SamplingParams:
    """How to turn logits into a distribution, and when to stop.

    temperature 0 means greedy (argmax, a one-hot distribution); so does any temperature below
    GREEDY_BELOW (1e-5, as vLLM), which is stored as 0. top_k 0 and top_p 1 and
    min_p 0 disable those filters. Penalties as in transformers and vLLM: repetition_penalty
    divides the positive logits (multiplies the negative ones) of tokens seen in the prompt or
    the output (1 = off); frequency_penalty subtracts f * count and presence_penalty p * [count
    > 0] for tokens of the output (0 = off); logit_bias adds a bias to chosen token ids.
    logprobs: None = off, else the log-probabilities of each emitted token and its top
    `logprobs` alternatives under the target's raw distribution (0 = the token's only).
    coupled chooses the verification rule when sampling: True = Gumbel-max noise keyed by
    (seed, position, token), so the text depends on the seed and the target only (see
    specdec.noise); False = Algorithm 1's rejection rule (the highest acceptance); None =
    coupled exactly when a seed is given.
    max_draft_tokens caps the tokens (tree nodes) drafted per step for this request, 0 = no
    speculation, None = the decoder's own gamma; it changes speed only, never the text's
    distribution (every rule above is exact whatever is drafted).
    constraint: what the output must match (specdec.constraint.Constraint: a JSON schema,
    any JSON object, a regex or a grammar), None = free text. Its mask applies after the
    penalties and logit bias and before temperature and the filters, to the target's p at
    every verified position and to a drafter's q alike (docs/structured-output.md).

    Limits (a UsageError naming the field otherwise; NaN and infinities are refused
    everywhere): seed an integer in [-2**63, 2**64), stored modulo 2**64 (torch's and the
    noise's own reading of a negative seed, so the text does not change);
    repetition_penalty in [0.01, 100]; frequency and presence penalties in [-2, 2];
    logit_bias values in [-100, 100] — bounds that keep every adjusted logit finite.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # keep going past the model's end-of-sequence token
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)  # or a Mapping
    logprobs: int | None = None
    coupled: bool | None = None
    max_draft_tokens: int | None = None
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise InvalidParameter("temperature",
                                   f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.temperature < GREEDY_BELOW:  # dividing by it would overflow the logits
            object.__setattr__(self, "temperature", 0.0)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidParameter("top_k",
                                   f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        _check_number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise InvalidParameter("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        _check_number("min_p", self.min_p)
        if not 0 <= self.min_p < 1:
            raise InvalidParameter("min_p", f"min_p must be in [0, 1), got {self.min_p}")
        self._check_seed()
        mnt = self.max_new_tokens
        if isinstance(mnt, bool) or not isinstance(mnt, int) or mnt < 1:
            raise InvalidParameter("max_new_tokens",
                                   f"max_new_tokens must be an integer >= 1, got {mnt!r}")
        stops = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in stops):
            raise InvalidParameter("stop_token_ids",
                                   f"stop_token_ids must be non-negative integers, got {stops!r}")
        object.__setattr__(self, "stop_token_ids", stops)
        if self.coupled is not None and not isinstance(self.coupled, bool):
            raise InvalidParameter("coupled",
                                   f"coupled must be true, false or None, got {self.coupled!r}")
        self._check_penalties()
        cap = self.max_draft_tokens
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                                or not 0 <= cap <= MAX_DRAFT_TOKENS):
            raise InvalidParameter("max_draft_tokens",
                                   f"max_draft_tokens must be None or an integer in "
                                   f"[0, {MAX_DRAFT_TOKENS}], got {cap!r}")
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise InvalidParameter("constraint", f"constraint must be a "
                                   f"specdec.Constraint or None, got {self.constraint!r}")
        lp = self.logprobs
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int)
                               or not 0 <= lp <= MAX_LOGPROBS):
            raise InvalidParameter("logprobs",
                                   f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], "
                                   f"got {lp!r}")

    def _check_seed(self) -> None:
        seed = self.seed
        if seed is None:
            return
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidParameter("seed", f"seed must be an integer or None, got {seed!r}")
        if not -(1 << 63) <= seed < 1 << 64:
            raise InvalidParameter("seed",
                                   f"seed must be an integer in [-2**63, 2**64), got {seed}")
        object.__setattr__(self, "seed", seed % (1 << 64))

    def _check_penalties(self) -> None:
        _check_number("repetition_penalty", self.repetition_penalty)
        low, high = REPETITION_PENALTY_RANGE
        if not low <= self.repetition_penalty <= high:
            raise InvalidParameter("repetition_penalty",
                                   f"repetition_penalty must be in [{low}, {high}] (1 = off), got "
                                   f"{self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            _check_number(name, getattr(self, name))
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidParameter(name,
                                       f"{name} must be in [-2, 2], got {getattr(self, name)}")
        bias = self.logit_bias
        pairs = list(bias.items() if isinstance(bias, Mapping) else _pairs(bias))
        if len(pairs) > MAX_LOGIT_BIAS:
            raise InvalidParameter("logit_bias", f"logit_bias has at most {MAX_LOGIT_BIAS} entries")
        for token, value in pairs:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InvalidParameter("logit_bias",
                                       f"logit_bias keys must be token ids >= 0, got {token!r}")
            _check_number("logit_bias", value)
            if not -100 <= value <= 100:
                raise InvalidParameter("logit_bias",
                                       f"logit_bias values must be in [-100, 100], got {value}")
        object.__setattr__(self, "logit_bias", tuple(sorted((t, float(v)) for t, v in pairs)))

    @property
    def penalized(self) -> bool:
        """True when the distribution depends on the tokens so far (or has a logit bias)."""
        return (self.repetition_penalty != 1 or self.frequency_penalty != 0
                or self.presence_penalty != 0 or bool(self.logit_bias))

    def check_vocabulary(self, vocab_size: int) -> None:
        """ValueError if a token id of logit_bias is outside the model's vocabulary."""
        bad = [t for t, _ in self.logit_bias if t >= vocab_size]
        if bad:
            raise InvalidParameter("logit_bias",
                                   f"logit_bias token id {bad[0]} is outside the vocabulary "
                                   f"[0, {vocab_size})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def coupled_rule(self) -> bool:
        """Sampling with seed-keyed noise (drafts and verification): see `coupled`."""
        if self.greedy:
            return False
        return self.seed is not None if self.coupled is None else self.coupled


MAX_LOGPROBS = 20  # as the OpenAI API
GREEDY_BELOW = 1e-5  # temperatures below this are greedy (vLLM's threshold)
REPETITION_PENALTY_RANGE = (0.01, 100.0)  # logits scaled at most 100x: finite in float32
MAX_LOGIT_BIAS = 1024
MAX_DRAFT_TOKENS = 64  # per step, as --gamma's bound (drafters.factory.MAX_GAMMA)


def _pairs(items: Iterable) -> Iterable[tuple]:
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise InvalidParameter("logit_bias",
                                   f"logit_bias must map token ids to biases, got {item!r}")
        yield tuple(item)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(name, f"{name} must be a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past float's range
        finite = False
    if not finite:
        raise InvalidParameter(name, f"{name} must be a finite number, got {value!r}")


def adjusted_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Map logits [..., V] to the distribution actually sampled from, in float32.

    Order as in transformers: temperature, top-k, top-p, min-p. Greedy gives one-hot(argmax).
    """
    logits = logits.float()
    if params.greedy:
        return one_hot(logits.argmax(dim=-1), logits.shape[-1])
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1:
        probs = _top_p(probs, params.top_p)
    if params.min_p > 0:
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p  # the token that crosses top_p is kept
    # and the most likely one always: a top_p below float32's range (5e-324) reads as 0
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def one_hot(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 one-hot distributions [..., V] at `tokens`."""
    return torch.nn.functional.one_hot(tokens, vocab_size).float()


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of probs [..., V]; returns [...] int64."""
    flat = probs.reshape(-1, probs.shape[-1])
    drawn = torch.multinomial(flat, 1, generator=generator)
    return drawn.reshape(probs.shape[:-1])


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded from `seed`, or from fresh entropy when seed is None.

    Samples are drawn where the distributions are: no host round trip per draw.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


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


@dataclass
class TokenLogprob:
    """An emitted token's log-probability and its most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob), most likely first


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """log-softmax of raw logits [n, V] at tokens[i] for row i, with the top `top` of each row.

    The model's own distribution, before temperature, filters and penalties (vLLM's default).
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.arange(len(tokens), device=logits.device)
    chosen = logprobs[rows, torch.tensor(tokens, device=logits.device)].tolist()
    if top > 0:
        values, ids = logprobs.topk(top, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(),
                                                             strict=True)]
    else:
        tops = [[] for _ in tokens]
    return [TokenLogprob(t, lp, alt) for t, lp, alt in zip(tokens, chosen, tops, strict=True)]
