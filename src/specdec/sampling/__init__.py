"""Sampling: parameters (params, their bounds), distributions and penalties.

The names users import come from here (`from specdec.sampling import SamplingParams`).
"""

from specdec.sampling.bounds import (
    BOUNDS,
    GREEDY_BELOW,
    MAX_DRAFT_TOKENS,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    Bound,
)
from specdec.sampling.distributions import (
    TokenLogprob,
    adjusted_probs,
    make_generator,
    one_hot,
    sample,
    token_logprobs,
)
from specdec.sampling.params import SamplingParams
from specdec.sampling.penalties import TokenHistory, penalize

__all__ = ["BOUNDS", "GREEDY_BELOW", "MAX_DRAFT_TOKENS", "MAX_LOGIT_BIAS", "MAX_LOGPROBS",
           "Bound", "SamplingParams", "TokenHistory", "TokenLogprob", "adjusted_probs",
           "make_generator", "one_hot", "penalize", "sample", "token_logprobs"]
