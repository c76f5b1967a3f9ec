"""Constraints under speculation: greedy identity, seeded identity, rollback, validity,
forced tokens, completion and bad input (the law itself: test_constraint_exactness.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from constraint_fixtures import Violator
from server_support import char_tokenizer
from specdec import Constraint, SamplingParams, SpeculativeDecoder
from specdec.errors import InvalidParameter
from specdec.models import wrap
from specdec.runtime.rows import SingleRow
from tiny import perturbed, tiny_llama
from tree_fixtures import RandomTrees

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 4},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
TAGS = {"type": "object", "additionalProperties": False, "required": ["ok", "tags"],
        "properties": {"ok": {"type": "boolean"},
                       "tags": {"type": "array", "items": {"enum": ["x", "yy", "z"]},
                                "maxItems": 3}}}
DIGITS = {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 9},
          "minItems": 1, "maxItems": 4}
SCHEMAS = [PERSON, TAGS, DIGITS]
PROMPTS = ["Tell me about Ann: ", "x", "{{{{ 1 2 3"]


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(vocab_size=len(tokenizer), seed=0)


@pytest.fixture(scope="module")
def target(model, tokenizer):
    return wrap(model, tokenizer, name="target")


@pytest.fixture(scope="module")
def draft(model, tokenizer):
    return wrap(perturbed(model, 0.3), tokenizer, name="draft")


def _drafters(target, draft, tokenizer, plain_tokens):
    vocab = len(tokenizer)
    return {"model": draft, "violator": Violator(vocab),
            "fixed": Violator(vocab, fixed=tokenizer.convert_tokens_to_ids("Z")),
            "trees": RandomTrees(vocab, 8, seed=2, truth=plain_tokens)}


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_constrained_speculation_equals_constrained_plain_greedy(
        target, draft, tokenizer, schema, prompt):
    params = SamplingParams(temperature=0, max_new_tokens=80,
                            constraint=Constraint.json_schema(schema))
    plain = SpeculativeDecoder(target, None).generate(prompt, params)
    assert plain.finish_reason == "stop"  # the grammar completed
    jsonschema.validate(json.loads(plain.text), schema)
    for name, drafter in _drafters(target, draft, tokenizer, plain.tokens).items():
        for gamma in (1, 4):
            out = SpeculativeDecoder(target, drafter, gamma).generate(prompt, params)
            assert out.tokens == plain.tokens, (name, gamma)
            assert out.finish_reason == "stop"
            if name == "model":  # forced tokens are drafted for free: fewer target calls
                assert out.stats.target_calls < plain.stats.target_calls


@pytest.mark.parametrize("schema", SCHEMAS)
def test_seeded_constrained_text_is_the_same_across_drafters_and_gamma(
        target, draft, tokenizer, schema):
    """The coupled rule (a seed): the text depends on the seed and the target only."""
    params = SamplingParams(temperature=1.0, seed=7, max_new_tokens=80,
                            constraint=Constraint.json_schema(schema))
    plain = SpeculativeDecoder(target, None).generate("Data: ", params)
    for drafter in (draft, Violator(len(tokenizer))):
        for gamma in (2, 5):
            out = SpeculativeDecoder(target, drafter, gamma).generate("Data: ", params)
            assert out.tokens == plain.tokens


def test_forced_tokens_are_counted_and_drafted_for_free(target, draft):
    """`{"name": "` is forced at the start of PERSON: plain decoding spends a target call per
    forced token, speculation drafts them (accepted with certainty)."""
    params = SamplingParams(temperature=0, max_new_tokens=80,
                            constraint=Constraint.json_schema(PERSON))
    plain = SpeculativeDecoder(target, None).generate("Ann", params)
    spec = SpeculativeDecoder(target, Violator(99, fixed=60), 1).generate("Ann", params)
    forced = len('{"name": "') + len('", "age": ')
    assert plain.stats.forced_tokens >= forced
    assert spec.stats.forced_tokens == plain.stats.forced_tokens
    assert spec.tokens == plain.tokens
    assert spec.stats.target_calls <= plain.stats.target_calls - forced + 2


def test_a_rejected_drafter_leaves_the_matcher_where_plain_decoding_would(target, tokenizer):
    """Step by step, the matcher of a row whose drafts are all rejected accepts exactly what
    a fresh matcher fed the output accepts, and holds no speculative path."""
    constraint = Constraint.json_schema(TAGS)
    params = SamplingParams(temperature=0, max_new_tokens=60, constraint=constraint)
    for drafter in (Violator(len(tokenizer)), Violator(len(tokenizer), fixed=5)):
        decoder = SpeculativeDecoder(target, drafter, 4)
        loop = decoder.batch(SingleRow(target))
        with torch.inference_mode():
            sequence = loop.add(decoder.encode("tags:"), params)
            output: list[int] = []
            while loop.sequences:
                for _, event in loop.step():
                    output.extend(event.tokens)
                if not loop.sequences:
                    break
                fresh = decoder.grammars.matcher(constraint, sequence.stop_ids)
                fresh.accept_output(output)
                assert sequence.grammar._path == []
                assert torch.equal(sequence.grammar.mask_at([]), fresh.mask_at([]))
        plain = SpeculativeDecoder(target, None).generate("tags:", params)
        assert output == plain.tokens
        assert sequence.stats.drafted - sequence.stats.accepted > 10  # rejections happened


def test_sampled_outputs_validate_and_a_batch_mixes_schemas_and_free_rows(target, draft):
    """T = 1, 96 outputs over three schemas in batches of 8 with free rows between them:
    every constrained output parses and validates; the free rows are not constrained."""
    decoder = SpeculativeDecoder(target, draft, 3)
    prompts, params = [], []
    for i in range(120):
        schema = None if i % 5 == 4 else SCHEMAS[i % 3]
        prompts.append(f"record {i}: ")
        params.append(SamplingParams(
            temperature=1.0, seed=i, max_new_tokens=90,
            constraint=None if schema is None else Constraint.json_schema(schema)))
    results = decoder.generate_batch(prompts, params, max_batch_size=8)
    free_json = 0
    for i, (result, p) in enumerate(zip(results, params, strict=True)):
        if p.constraint is None:
            free_json += result.text.startswith("{")
            continue
        assert result.finish_reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), SCHEMAS[i % 3])
    assert free_json < 24
    # a row's output does not depend on the batch it ran in
    alone = decoder.generate(prompts[1], params[1])
    assert alone.tokens == results[1].tokens


def test_regex_grammar_and_json_object(target, draft):
    spec = SpeculativeDecoder(target, draft, 3)
    cases = [(Constraint.regex(r"(yes|no), [0-9]{2}"), r"(yes|no), [0-9]{2}"),
             (Constraint.grammar('start: "ab" x+ "!"\nx: "0" | "1"'), r"ab[01]+!"),
             (Constraint.grammar('root ::= "id-" [a-c]+ "."'), r"id-[a-c]+\.")]
    import re
    for constraint, pattern in cases:
        for seed in range(5):
            out = spec.generate("go", SamplingParams(temperature=1.0, seed=seed,
                                                     max_new_tokens=40, constraint=constraint))
            if out.finish_reason == "stop":
                assert re.fullmatch(pattern, out.text), out.text
            else:
                assert out.finish_reason == "length" and len(out.tokens) == 40
    out = spec.generate("go", SamplingParams(temperature=1.0, seed=1, max_new_tokens=200,
                                             constraint=Constraint.json_object()))
    if out.finish_reason == "stop":
        assert isinstance(json.loads(out.text), dict)
    else:
        assert out.text.startswith("{")


def test_length_before_the_grammar_completes(target, draft):
    params = SamplingParams(temperature=0, max_new_tokens=5,
                            constraint=Constraint.json_schema(PERSON))
    out = SpeculativeDecoder(target, draft, 3).generate("x", params)
    assert out.finish_reason == "length" and len(out.tokens) == 5 and out.text[:2] == '{"'


def test_stop_tokens_end_an_accepted_output(tokenizer):
    """With an end-of-sequence token, the grammar allows it exactly where it accepts."""
    model = tiny_llama(vocab_size=len(tokenizer), seed=5)
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # the model wants to stop at once
        model.lm_head.bias = None
        model.lm_head.weight[eos] += 50 * model.lm_head.weight[eos].sign()
    target = wrap(model, tokenizer, name="target")
    assert target.eos_token_ids == {eos}
    params = SamplingParams(temperature=0, max_new_tokens=30,
                            constraint=Constraint.regex("a+b*"))
    out = SpeculativeDecoder(target, None).generate("q", params)
    assert out.finish_reason == "stop" and out.tokens[-1] == eos and out.text == "a"


@pytest.mark.parametrize("constraint,words", [
    (lambda: Constraint.json_schema({"type": "strin"}), "does not compile"),
    (lambda: Constraint.json_schema({"type": "object", "if": {}}), "if"),
    (lambda: Constraint.regex("[0-9"), "does not compile"),
    (lambda: Constraint.regex("é+"), "matches nothing"),
    (lambda: Constraint.grammar("start: missing_rule"), "does not compile"),
    (lambda: Constraint.json_schema("{not json"), "not JSON"),
    (lambda: Constraint.regex("a" * 200_000), "too large"),
    (lambda: Constraint("xml", "x"), "kind"),
])
def test_bad_constraints_are_refused_by_name(target, constraint, words):
    decoder = SpeculativeDecoder(target, None)
    with pytest.raises(InvalidParameter) as caught:
        decoder.generate("x", SamplingParams(max_new_tokens=4, constraint=constraint()))
    assert caught.value.param == "constraint" and words in str(caught.value)
    lenient = Constraint.json_schema({"type": "object", "if": {}}, strict=False)
    assert decoder.generate("x", SamplingParams(temperature=0, max_new_tokens=4,
                                                constraint=lenient)).text.startswith("{")


def test_penalties_and_bias_apply_before_the_mask(target, draft, tokenizer):
    """Penalties and a logit bias toward a refused token change nothing the grammar refuses:
    greedy speculation still equals plain, and the output still validates."""
    brace = tokenizer.convert_tokens_to_ids("[")
    params = SamplingParams(temperature=0, max_new_tokens=80, repetition_penalty=1.3,
                            frequency_penalty=0.5, logit_bias={brace: 100.0},
                            constraint=Constraint.json_schema(PERSON))
    plain = SpeculativeDecoder(target, None).generate("Bob", params)
    jsonschema.validate(json.loads(plain.text), PERSON)
    for drafter in (draft, Violator(len(tokenizer))):
        assert SpeculativeDecoder(target, drafter, 3).generate("Bob", params).tokens == \
            plain.tokens
