"""SamplingParams: what a request asks of sampling, checked against bounds.BOUNDS."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from specdec.constraint import Constraint
from specdec.errors import InvalidParameter
from specdec.sampling.bounds import BOUNDS, GREEDY_BELOW, MAX_LOGIT_BIAS


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
    specdec.noise); False = Algorithm 1's rejection rule; None = coupled exactly when a seed
    is given and block_verification is off. block_verification: uncoupled sampling verifies
    a line of drafts jointly (specdec.verify_block, Sun et al. 2025: exact, never fewer
    tokens than Algorithm 1 in expectation) instead of token by token; trees keep Algorithm 1.
    The rule itself is decided once per request: specdec.acceptance.AcceptanceRule.
    max_draft_tokens caps the tokens (tree nodes) drafted per step for this request, 0 = no
    speculation, None = the decoder's own gamma; it changes speed only, never the text's
    distribution (every rule above is exact whatever is drafted).
    constraint: what the output must match (specdec.constraint.Constraint: a JSON schema,
    any JSON object, a regex or a grammar), None = free text. Its mask applies after the
    penalties and logit bias and before temperature and the filters, to the target's p at
    every verified position and to a drafter's q alike (docs/structured-output.md).

    Limits: bounds.BOUNDS (an InvalidParameter naming the field otherwise; NaN and
    infinities are refused everywhere). A seed is stored modulo 2**64 (torch's and the
    noise's own reading of a negative seed, so the text does not change).
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
    block_verification: bool = False
    max_draft_tokens: int | None = None
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        _check_bound("temperature", self.temperature, "(0 = greedy)")
        if self.temperature < GREEDY_BELOW:  # dividing by it would overflow the logits
            object.__setattr__(self, "temperature", 0.0)
        _check_integer("top_k", self.top_k, "(0 = off)")
        for name in ("top_p", "min_p"):
            _check_number(name, getattr(self, name))
            _check_bound(name, getattr(self, name))
        self._check_seed()
        _check_integer("max_new_tokens", self.max_new_tokens)
        stops = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in stops):
            raise InvalidParameter("stop_token_ids",
                                   f"stop_token_ids must be non-negative integers, got {stops!r}")
        object.__setattr__(self, "stop_token_ids", stops)
        if self.coupled is not None and not isinstance(self.coupled, bool):
            raise InvalidParameter("coupled",
                                   f"coupled must be true, false or None, got {self.coupled!r}")
        if not isinstance(self.block_verification, bool):
            raise InvalidParameter("block_verification", f"block_verification must be true "
                                   f"or false, got {self.block_verification!r}")
        if self.block_verification and self.coupled:
            raise InvalidParameter("block_verification", "block_verification is a rule for "
                                   "uncoupled sampling: it cannot be combined with coupled=true")
        self._check_penalties()
        for name in ("max_draft_tokens", "logprobs"):
            if getattr(self, name) is not None:
                _check_integer(name, getattr(self, name), "or None")
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise InvalidParameter("constraint", f"constraint must be a "
                                   f"specdec.Constraint or None, got {self.constraint!r}")

    def _check_seed(self) -> None:
        seed = self.seed
        if seed is None:
            return
        _check_integer("seed", seed, "or None")
        object.__setattr__(self, "seed", seed % (1 << 64))

    def _check_penalties(self) -> None:
        for name in ("repetition_penalty", "frequency_penalty", "presence_penalty"):
            _check_number(name, getattr(self, name))
            _check_bound(name, getattr(self, name),
                         "(1 = off)" if name == "repetition_penalty" else "(0 = off)")
        bias = self.logit_bias
        pairs = list(bias.items() if isinstance(bias, Mapping) else _pairs(bias))
        if len(pairs) > MAX_LOGIT_BIAS:
            raise InvalidParameter("logit_bias", f"logit_bias has at most {MAX_LOGIT_BIAS} entries")
        for token, value in pairs:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InvalidParameter("logit_bias",
                                       f"logit_bias keys must be token ids >= 0, got {token!r}")
            _check_number("logit_bias", value)
            _check_bound("logit_bias", value)
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
        if self.coupled is None:  # a seed asks for coupling unless block verification is
            return self.seed is not None and not self.block_verification
        return self.coupled


def _pairs(items: Iterable) -> Iterable[tuple]:
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise InvalidParameter("logit_bias",
                                   f"logit_bias must map token ids to biases, got {item!r}")
        yield tuple(item)


def _check_bound(name: str, value: float, note: str = "") -> None:
    """InvalidParameter unless value lies in the field's bound (bounds.BOUNDS)."""
    bound = BOUNDS[name]
    if bound.contains(value):
        return
    subject = "logit_bias values" if name == "logit_bias" else name
    where = f"in {bound.text()}" if bound.low is not None and bound.high is not None \
        else bound.text()
    raise InvalidParameter(name, f"{subject} must be {where}{' ' + note if note else ''}, "
                                 f"got {value!r}")


def _check_integer(name: str, value: object, note: str = "") -> None:
    """InvalidParameter unless value is an integer (not a bool) within its bound."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(name, f"{name} must be an integer{' ' + note if note else ''}, "
                                     f"got {value!r}")
    _check_bound(name, value, note)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(name, f"{name} must be a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past float's range
        finite = False
    if not finite:
        raise InvalidParameter(name, f"{name} must be a finite number, got {value!r}")


