"""Constrained speculative sampling is exact: 3-token continuations against enumeration.

A tiny float32 model over 4 characters (a, b, 0, 1; 7 ids with the specials) and the regex
`(a[01][ab]|b[ab][01]|0[01ab]b)[ab01]*`, whose allowed next characters depend on the path
(and force `b` after `0?`). The exact law of the constrained target is enumerated from the
model's logits with the grammar's masks written out by hand (not llguidance's): the logits
of disallowed tokens at -inf, then temperature and filters, per position. Speculative
samples (Algorithm 1's rule, seeds 0..N-1) are compared with it by
tests/test_exactness_sequence.py's checks: pooled chi-square p > 1e-4 and TV below the 99.9th
percentile of exact sampling's, so a false-alarm rate <= 0.11% per configuration.
Power (tests/power.py, worst case over alternatives): N = 1,200 draws catch any TV bias of
12% with probability >= 99% (df <= 20; 12 cells here). Drafters: a guided model drafter (q masked),
one whose uniform q breaks the grammar at most drafts, and random trees (each node masked
along its own path).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from constraint_fixtures import Violator, chars_tokenizer
from specdec import Constraint, SamplingParams, SpeculativeDecoder
from specdec.models import wrap
from specdec.sampling import adjusted_probs
from test_exactness_sequence import pooled_chisquare, tv_threshold
from tiny import perturbed, tiny_llama
from tree_fixtures import RandomTrees

CHARS = "ab01"
REGEX = "(a[01][ab]|b[ab][01]|0[01ab]b)[ab01]*"
VOCAB, LENGTH, DRAWS = 3 + len(CHARS), 3, 1200
PROMPT = [3, 4, 5, 6]


def allowed(prefix: str) -> set[str]:
    """The regex's next characters after `prefix`, by hand (anything after a prefix the
    regex refuses: such continuations have probability 0 already)."""
    if "?" in prefix or (prefix and prefix[0] not in "ab0"):
        return set(CHARS)
    if not prefix:
        return {"a", "b", "0"}
    if len(prefix) == 1:
        return {"a": {"0", "1"}, "b": {"a", "b"}, "0": set(CHARS)}[prefix]
    if len(prefix) == 2:
        return {"a": {"a", "b"}, "b": {"0", "1"}, "0": {"b"}}[prefix[0]]
    return set(CHARS)


@pytest.fixture(scope="module")
def model():
    model = tiny_llama(vocab_size=VOCAB, seed=3)
    with torch.no_grad():  # spread the mass out (tiny_llama sharpens for greedy tests)
        model.lm_head.weight.mul_(0.15)
    return model


def exact_law(model, params: SamplingParams) -> torch.Tensor:
    """P(x1 x2 x3 | PROMPT) of the constrained target, index x1*49 + x2*7 + x3."""
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))
    inputs = torch.cat([torch.tensor(PROMPT).expand(len(seqs), -1), seqs], dim=1)
    with torch.no_grad():
        logits = model(input_ids=inputs).logits.float()[:, len(PROMPT) - 1: -1]
    masks = torch.zeros(len(seqs), LENGTH, VOCAB, dtype=torch.bool)
    for n, seq in enumerate(seqs.tolist()):
        text = ""
        for i, token in enumerate(seq):
            for c in allowed(text):
                masks[n, i, 3 + CHARS.index(c)] = True
            text += CHARS[token - 3] if token >= 3 else "?"
    probs = adjusted_probs(logits.masked_fill(~masks, float("-inf")), params)
    chosen = probs.gather(-1, seqs[..., None])[..., 0].nan_to_num(0.0)
    return chosen.prod(dim=-1).double()


def _decoder(model, kind: str) -> SpeculativeDecoder:
    tokenizer = chars_tokenizer(CHARS)
    target = wrap(model, tokenizer, name="target")
    if kind == "model":
        return SpeculativeDecoder(target, wrap(perturbed(model, 0.6, seed=4), tokenizer,
                                               name="draft"), 3)
    if kind == "violator":
        return SpeculativeDecoder(target, Violator(VOCAB), 3)
    return SpeculativeDecoder(target, RandomTrees(VOCAB, 6, seed=1), 6)


@pytest.mark.parametrize("kind,params", [
    ("model", dict(temperature=1.0)),
    ("violator", dict(temperature=0.8, top_k=2)),
    ("trees", dict(temperature=1.0)),
])
def test_constrained_speculation_matches_the_constrained_target(model, kind, params):
    decoder = _decoder(model, kind)
    exact = exact_law(model, SamplingParams(**params))
    constraint = Constraint.regex(REGEX)
    counts = torch.zeros(VOCAB ** LENGTH, dtype=torch.long)
    drafted = accepted = trees = 0
    for seed in range(DRAWS):
        # a token more than checked: a tree's first step gets fewer nodes
        result = decoder.generate(PROMPT, SamplingParams(
            **params, seed=seed, coupled=False, max_new_tokens=LENGTH + (kind == "trees"),
            ignore_eos=True, constraint=constraint))
        x1, x2, x3 = result.tokens[:LENGTH]
        counts[x1 * VOCAB * VOCAB + x2 * VOCAB + x3] += 1
        drafted += result.stats.drafted
        accepted += result.stats.accepted
        trees += result.stats.tree_steps
    assert counts[exact == 0].sum() == 0  # every output obeys the grammar
    assert 0.05 < accepted / drafted < 0.98  # rejections happened, and acceptances
    if kind == "trees":
        assert trees > DRAWS / 2
    support = exact > 0  # cells the grammar forbids were checked empty above
    assert _chisquare(counts[support].double(), exact[support] * DRAWS) > 1e-4
    tv = 0.5 * (counts.double() / DRAWS - exact).abs().sum()
    assert tv < tv_threshold(exact, DRAWS), f"TV {tv:.3f}"


def _chisquare(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's p-value, cells expecting < 5 pooled (when there are any)."""
    if bool((expected < 5).any()):
        return pooled_chisquare(counts, expected)
    return float(chisquare(counts.numpy(), (expected * counts.sum() / expected.sum()).numpy())
                 .pvalue)
