"""Self-speculation: low-bit layers and views, vocabulary-subset heads, exactness, parsing.

Statistical tests as in test_drafters.py: 1,200 continuations of 3 tokens (seeds 0..1199)
against the distribution enumerated from the target alone, chi-square with cells expecting < 5
pooled, failing below p = 1e-3 (a false-alarm rate of 0.1% per test; fixed seeds, so each
outcome is deterministic).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from drafter_fixtures import (
    SIZES,
    chi_square_pvalue,
    draws_for,
    exact_continuations,
    sampled,
    target_model,
)
from specdec.decoding import SpeculativeDecoder
from specdec.drafters.base import Drafter
from specdec.drafters.combined import CombinedDrafter, PolicyConfig
from specdec.drafters.factory import build_drafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.self_spec import SelfDrafter
from specdec.models import wrap
from specdec.runtime.low_bit_view import (
    VocabularySubsetHead,
    frequent_token_ids,
    low_bit_view,
    shared_tree,
)
from specdec.runtime.quantize import Int4Linear, Int8Linear, quantized_linear
from specdec.sampling import SamplingParams
from tiny import tiny_llama

SAMPLES = 1200
LENGTH = 3
FALSE_ALARM = 1e-3


def _linear(n: int, k: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=True)


@pytest.mark.parametrize("bits,n,k,tolerance", [(8, 40, 64, 0.02), (4, 8, 32, 0.15),
                                                (4, 40, 128, 0.15)])
def test_low_bit_linear_is_close_to_the_float_layer(bits, n, k, tolerance):
    linear = _linear(n, k)
    layer = quantized_linear(linear, bits)
    assert isinstance(layer, Int8Linear if bits == 8 else Int4Linear)
    x = torch.randn(3, 2, k)
    exact, got = linear(x), layer(x)
    assert got.shape == exact.shape == (3, 2, n)  # int4: 8 and 40 outputs padded to 16, cut
    error = (got - exact).abs().max() / exact.abs().max()
    assert 0 < error < tolerance
    assert layer.weight.shape == (n, k)
    # float32 in, float32 out (int4 computes in bfloat16: the kernel's fast path)
    assert got.dtype == linear.weight.dtype == torch.float32
    if bits == 4:
        assert layer.weight.dtype == torch.float32
        assert layer.scales_and_zeros.dtype == torch.bfloat16


def test_int8_kernel_equals_the_dequantized_product():
    """torch's int8 kernel computes the product of the dequantized weight (the reference the
    CUDA kernel is checked against in test_gpu; no layer dequantizes per call)."""
    layer = Int8Linear(_linear(40, 64))
    x = torch.randn(3, 64)
    generic = torch.nn.functional.linear(x, layer.qweight.float()) * layer.scales
    assert torch.allclose(layer(x) - layer.bias, generic, atol=1e-4)


def test_int4_falls_back_to_int8_where_no_group_fits():
    assert isinstance(quantized_linear(_linear(16, 24), 4), Int8Linear)  # 24: no group of 32+
    with pytest.raises(ValueError, match="bits"):
        quantized_linear(_linear(16, 32), 3)


def test_many_rows_run_in_full_precision_one_row_in_low_bits():
    linear = _linear(32, 64)
    layer = Int4Linear(linear, 32, full_rows=4)
    assert layer.full is linear  # the layer itself, not a copy of its weight
    many, one = torch.randn(5, 64), torch.randn(1, 64)
    assert torch.equal(layer(many), linear(many))
    assert not torch.equal(layer(one), linear(one))


def test_view_shares_the_targets_tensors_and_leaves_it_untouched():
    model = tiny_llama(64, seed=1)
    before = {name: p.clone() for name, p in model.named_parameters()}
    view = low_bit_view(model, 4)
    assert view.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert view.model.norm.weight is model.model.norm.weight
    assert view.model.layers[0].input_layernorm.weight is \
        model.model.layers[0].input_layernorm.weight
    assert isinstance(view.model.layers[0].mlp.up_proj, Int4Linear)
    assert isinstance(view.lm_head, Int4Linear)
    assert all(type(m) is not Int4Linear for m in model.modules())  # the target keeps nn.Linear
    # no tensor of the view's is a copy of a target tensor: shared or new low-bit data only
    target_ptrs = {p.data_ptr() for p in model.parameters()}
    for name, p in view.named_parameters():
        assert p.data_ptr() in target_ptrs or "bias" in name, name
    calls = []
    view.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        model(input_ids=ids)
        assert not calls  # hooks on the view stay on the view
        exact = model(input_ids=ids).logits
        assert (view(input_ids=ids).logits - exact).abs().max() < 0.25 * exact.abs().max()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_views_at_the_same_settings_share_their_low_bit_layers():
    model = tiny_llama(64, seed=1)
    first, second, other = low_bit_view(model, 4), low_bit_view(model, 4), low_bit_view(model, 8)
    assert first.model.layers[0].mlp.up_proj is second.model.layers[0].mlp.up_proj
    assert first.model.layers[0] is not second.model.layers[0]
    assert isinstance(other.model.layers[0].mlp.up_proj, Int8Linear)


def test_shared_tree_substitutes_by_path():
    model = tiny_llama(64, seed=1)
    view = shared_tree(model, lambda path, child: nn.Identity() if path == "lm_head" else None)
    assert isinstance(view.lm_head, nn.Identity) and isinstance(model.lm_head, nn.Linear)
    assert view.model is not model.model and view.model.layers[1] is not model.model.layers[1]


def test_subset_head_gives_the_full_heads_logits_at_its_ids():
    head = _linear(64, 32, seed=3)
    subset = VocabularySubsetHead(head, torch.tensor([5, 1, 9, 1]), bits=None, initial_capacity=2)
    assert subset.ids.tolist() == [1, 5, 9]  # sorted, once each
    hidden = torch.randn(2, 32)
    full = head(hidden)
    logits = subset(hidden)
    assert torch.allclose(logits[:, :3], full[:, [1, 5, 9]])
    assert torch.all(logits[:, 3:] == float("-inf"))  # unused capacity
    assert subset.add([9, 30, 30, 2, 99]) == 2  # 9 covered, 99 outside the vocabulary
    assert subset.ids.tolist() == [1, 5, 9, 30, 2] and subset.size == 5
    assert subset.add([7]) == 1  # capacity 2 -> 4
    assert subset(hidden).shape == (2, 3 + 4)
    assert torch.allclose(subset(hidden)[:, :6], full[:, [1, 5, 9, 30, 2, 7]])
    subset.reset()
    assert subset.ids.tolist() == [1, 5, 9]
    assert torch.all(subset(hidden)[:, 3:] == float("-inf"))
    bounded = VocabularySubsetHead(head, torch.tensor([0]), bits=4, max_extra=3)
    assert bounded.add(range(10)) == 3 and len(bounded.ids) == 4
    with pytest.raises(ValueError):
        VocabularySubsetHead(head, torch.tensor([64]))


def test_frequent_ids_are_the_lowest_plus_the_special_ones():
    assert frequent_token_ids(100, 4, always=[99, 2, 500]).tolist() == [0, 1, 2, 3, 99]
    with pytest.raises(ValueError):
        frequent_token_ids(100, 0)


def subset_drafter(target, ids: list[int], bits: int | None = 4, context: bool = False):
    """A self drafter of target whose head covers `ids` (and the context if asked)."""
    head = VocabularySubsetHead(target.model.get_output_embeddings(), torch.tensor(ids), bits)
    view = low_bit_view(target.model, bits, head=head)
    return SelfDrafter(wrap(view, name="self"), head, target.vocab_size, "self", context)


@pytest.mark.parametrize("greedy", [True, False])
def test_a_subset_head_never_proposes_outside_its_subset(greedy):
    target = wrap(tiny_llama(64, seed=7), name="target")
    allowed = [3, 8, 13, 21, 34, 55]
    drafter = subset_drafter(target, allowed)
    params = SamplingParams(temperature=0 if greedy else 1.0)
    generator = torch.Generator().manual_seed(0)
    drafter.begin(torch.tensor([[1, 2, 3]]))
    for step in range(20):
        context = torch.tensor([[1, 2, 3] + [step % 60 + 1] * step])
        proposal = drafter.propose(context, 4, params, generator)
        assert set(proposal.tokens[0].tolist()) <= set(allowed)
        if not greedy:
            q = proposal.probs[0]
            outside = torch.ones(64, dtype=torch.bool)
            outside[allowed] = False
            assert torch.all(q[:, outside] == 0)
            assert torch.allclose(q.sum(dim=-1), torch.ones(4))


def test_context_tokens_join_the_subset():
    target = wrap(tiny_llama(64, seed=7), name="target")
    drafter = subset_drafter(target, [3], context=True)
    drafter.begin(torch.tensor([[40, 41]]))
    drafter.propose(torch.tensor([[40, 41, 42]]), 2, SamplingParams(temperature=0), None)
    assert set(drafter.head.ids.tolist()) == {3, 40, 41, 42}


def test_self_drafter_copies_the_targets_prompt_cache():
    target = wrap(tiny_llama(64, seed=7), name="target")
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    copying, own = build_drafter("self@int4", target, None), build_drafter("self@int4", target,
                                                                           None)
    own.target = None  # prefills itself, through the full-precision weights
    target.prefill(prompt)
    copying.begin(prompt)
    own.begin(prompt)
    assert copying.copied_prefill and not own.copied_prefill
    assert copying.model.cached_length == own.model.cached_length == 5
    for mine, theirs in zip(copying.model.cache.keys + copying.model.cache.values,
                            own.model.cache.keys + own.model.cache.values, strict=True):
        assert torch.allclose(mine[:, :, :5], theirs[:, :, :5], atol=1e-5)
    greedy = SamplingParams(temperature=0)
    context = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    assert torch.equal(copying.propose(context, 4, greedy, None).tokens,
                       own.propose(context, 4, greedy, None).tokens)
    target.prefill(torch.tensor([[1, 2, 3]]))  # the target holds another prompt: no copy
    copying.begin(prompt)
    assert not copying.copied_prefill and copying.model.cached_length == 5


def _top_token(target, prompt: list[int]) -> int:
    with torch.no_grad():
        return int(target.model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())


PROMPT = [4, 1, 5]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case,params,gamma", [
    ("int4 full head", dict(temperature=1.0), 3),
    ("int8 subset without the top token, top-k", dict(temperature=0.7, top_k=5), 3),
    ("ngram+int4 subset without the top token", dict(temperature=1.0, top_p=0.9), 2),
])
def test_sampling_matches_the_target_distribution(case, params, gamma, size):
    target = target_model(8, seed=3)
    top = _top_token(target, PROMPT)
    missing_top = [t for t in range(8) if t != top][:5]
    if case == "int4 full head":
        drafter = build_drafter("self@int4", target, None)
    else:
        drafter = subset_drafter(target, missing_top, 8 if "int8" in case else 4)
    if case.startswith("ngram"):
        drafter = CombinedDrafter(NgramDrafter(1, 2), drafter, PolicyConfig(prior_lookup=5.0))
    run = SamplingParams(**params, max_new_tokens=LENGTH, ignore_eos=True)
    decoder = SpeculativeDecoder(target, drafter, gamma=gamma)
    exact = exact_continuations(target, PROMPT, LENGTH, run)
    n = draws_for(size, SAMPLES, exact, FALSE_ALARM)
    counts = sampled(decoder, PROMPT, run, n)
    assert chi_square_pvalue(counts, exact, n) > FALSE_ALARM
    if "without the top token" in case:  # the drafts miss often: verification does the work
        assert sum(c for seq, c in counts.items() if seq[0] == top) > n * exact_first(
            exact, top) * 0.8


def exact_first(exact: dict[tuple[int, ...], float], token: int) -> float:
    return sum(p for seq, p in exact.items() if seq[0] == token)


GREEDY_PROMPTS = [[1, 2, 3, 4, 1, 2, 3], [7] * 5, [5, 9, 11, 5, 9], [30, 31, 32, 33, 34, 35]]


@pytest.mark.parametrize("spec", ["self@int8", "self@int4", "self@int4@vocab=20",
                                  "ngram+self@int4@vocab=20", "self@vocab=5"])
def test_greedy_float32_identical_to_plain_greedy(spec):
    target = wrap(tiny_llama(64, seed=7), name="target")
    params = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    accepted = 0
    for prompt in GREEDY_PROMPTS:
        expected = SpeculativeDecoder(target, None).generate(prompt, params).tokens
        for gamma in (1, 3, 6):
            drafter = build_drafter(spec, target, None)
            got = SpeculativeDecoder(target, drafter, gamma=gamma).generate(prompt, params)
            assert got.tokens == expected, (spec, prompt, gamma)
            accepted += got.stats.accepted
    assert accepted > 0


def test_self_needs_a_transformers_target():
    class Bare:
        name, vocab_size, tokenizer = "bare", 8, None

    with pytest.raises(ValueError, match="transformers target"):
        build_drafter("self@int8", Bare(), None)


# --- the combined policy --------------------------------------------------------------------

class _Clock:
    """Fake time: the policy's measurements are exactly what a test says a step cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Stub(Drafter):
    """A drafter that proposes what `script(position)` says, costing `cost` fake seconds."""

    def __init__(self, name: str, script, match: int = 0, clock=None, cost: float = 0.0):
        self.name, self.script, self.last_match = name, script, match
        self.clock, self.cost = clock, cost

    def begin(self, prompt_ids):
        pass

    def propose(self, context, gamma, params, generator):
        from specdec.drafters.base import Proposal

        if self.clock is not None:
            self.clock.now += self.cost
        tokens = self.script(context.shape[1])[:gamma]
        return Proposal(torch.tensor([tokens], dtype=torch.long))


def _drive(drafter, truth, clock, steps: int = 30, gamma: int = 4, verify: float = 1.0) -> None:
    """Decode `truth` (the target's output): accept matching drafts; a verify costs `verify`."""
    params = SamplingParams(temperature=0)
    length = 3
    drafter.begin(torch.tensor([truth[:length]]))
    for _ in range(steps):
        proposal = drafter.propose(torch.tensor([truth[:length]]), gamma, params, None)
        clock.now += verify
        drafts = proposal.tokens[0].tolist()
        n = 0
        while n < len(drafts) and drafts[n] == truth[length + n]:
            n += 1
        length += n + 1  # accepted drafts plus the correction or bonus token


TRUTH = list(range(1000))


def test_policy_takes_the_lookup_when_its_long_matches_are_right():
    clock = _Clock()
    lookup = _Stub("lookup", lambda pos: TRUTH[pos:pos + 8], match=3)  # always right
    model = _Stub("model", lambda pos: [TRUTH[pos], -1, -1, -1], clock=clock, cost=0.2)
    drafter = CombinedDrafter(lookup, model, clock=clock)
    _drive(drafter, TRUTH, clock)
    assert drafter.lookup_steps > 25 and drafter.fallback_steps < 5
    assert drafter.stats[True].lookup[3].mean(0.0) > 3  # learned: 4 of 4 accepted


def test_policy_keeps_the_model_when_the_lookup_is_worse():
    clock = _Clock()
    lookup = _Stub("lookup", lambda pos: [-1] * 8, match=1)  # never right
    model = _Stub("model", lambda pos: TRUTH[pos:pos + 4], clock=clock, cost=0.2)  # always right
    drafter = CombinedDrafter(lookup, model, clock=clock)
    _drive(drafter, TRUTH, clock)
    assert drafter.fallback_steps == 30 and drafter.lookup_steps == 0
    assert drafter.stats[True].lookup[1].mean(0.0) < 0.1  # scored although never used


def test_policy_weighs_the_model_drafters_cost():
    # the lookup gets 1 of 4, the model 2 of 4: the model pays off only while it is cheap
    for cost, lookup_wins in ((0.1, False), (0.9, True)):
        clock = _Clock()
        lookup = _Stub("lookup", lambda pos: TRUTH[pos:pos + 1] + [-1] * 7, match=2)
        model = _Stub("model", lambda pos: TRUTH[pos:pos + 2] + [-1, -1], clock=clock, cost=cost)
        drafter = CombinedDrafter(lookup, model, clock=clock)
        _drive(drafter, TRUTH, clock, steps=40)
        stats = drafter.stats[True]
        assert abs(stats.draft_share - cost) < 1e-6
        assert stats.lookup_wins(2) == lookup_wins, cost  # (1+1)(1+c) vs 1+2


def test_policy_switches_by_match_length():
    # long matches are right, short ones wrong; the model gets 2 of 4
    def lookup_script(pos):
        lookup.last_match = 4 if pos % 2 else 1
        return TRUTH[pos:pos + 8] if pos % 2 else [-1] * 8

    clock = _Clock()
    lookup = _Stub("lookup", lookup_script)
    model = _Stub("model", lambda pos: TRUTH[pos:pos + 2] + [-1, -1], clock=clock, cost=0.2)
    drafter = CombinedDrafter(lookup, model, clock=clock)
    _drive(drafter, TRUTH, clock, steps=60)
    stats = drafter.stats[True]
    assert stats.lookup_wins(4) and not stats.lookup_wins(1)
    assert drafter.lookup_steps > 0 and drafter.fallback_steps > 0


# --- parsing ---------------------------------------------------------------------------------

def test_draft_specs_parse_options_and_gammas_in_one_place():
    from specdec.bench.suite import drafter_models, split_draft
    from specdec.drafters.factory import parse_draft, split_gammas

    assert split_gammas("ngram+smollm2-135m@int8@auto") == ("ngram+smollm2-135m@int8", ["auto"])
    assert split_gammas("self@int4@vocab=4096@2/4/auto") == ("self@int4@vocab=4096",
                                                             [2, 4, "auto"])
    assert split_gammas("self@int8") == ("self@int8", None)
    spec = parse_draft("ngram:1:8+self@int4@vocab=4096")
    assert (spec.lookup, spec.kind, spec.bits, spec.vocab) == ("ngram:1:8", "self", 4, 4096)
    spec = parse_draft("ngram+smollm2-135m@int8")
    assert (spec.lookup, spec.kind, spec.model, spec.bits) == ("ngram", "model", "smollm2-135m",
                                                               8)
    assert split_draft("ngram+smollm2-135m@int8@auto", [4]) == ("ngram+smollm2-135m@int8",
                                                                ["auto"])
    assert split_draft("self@int4", [4, "auto"]) == ("self@int4", [4, "auto"])
    assert drafter_models(["ngram+smollm2-135m@int8@auto", "self@int4@2", "ngram@auto",
                           "smollm2-135m"]) == ["smollm2-135m"]
    for bad in ("self@int3", "self@vocab=0", "x@vocab=5", "ngram+", "ngram+bigram:f",
                "self@int8@int4", "@int8", "trigram:f", "self@4x"):
        with pytest.raises(ValueError):
            parse_draft(bad)
    with pytest.raises(ValueError):
        split_draft("self@int4@99", [4])  # gamma out of range
