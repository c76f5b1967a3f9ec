"""One table of bounds (sampling.bounds.BOUNDS): SamplingParams and the server's schema both
follow it, so a request the schema takes is one SamplingParams takes, and the reverse."""

from __future__ import annotations

import pytest

from specdec.errors import InvalidParameter
from specdec.sampling import BOUNDS, Bound, SamplingParams
from specdec.server.schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Speculative,
    parse,
)

# SamplingParams field -> the schema fields that carry it (model, name)
CARRIERS = {
    "temperature": [(CompletionRequest, "temperature")],
    "top_k": [(CompletionRequest, "top_k")],
    "top_p": [(CompletionRequest, "top_p")],
    "min_p": [(CompletionRequest, "min_p")],
    "seed": [(CompletionRequest, "seed")],
    "max_new_tokens": [(CompletionRequest, "max_tokens"),
                       (ChatCompletionRequest, "max_completion_tokens")],
    "repetition_penalty": [(CompletionRequest, "repetition_penalty")],
    "frequency_penalty": [(CompletionRequest, "frequency_penalty")],
    "presence_penalty": [(CompletionRequest, "presence_penalty")],
    "logit_bias": [(CompletionRequest, "logit_bias")],
    "logprobs": [(CompletionRequest, "logprobs"), (ChatCompletionRequest, "top_logprobs")],
    "max_draft_tokens": [(Speculative, "max_draft_tokens")],
}

_KEYS = {"minimum": ("low", False), "exclusiveMinimum": ("low", True),
         "maximum": ("high", False), "exclusiveMaximum": ("high", True)}


def schema_bound(model: type, name: str) -> Bound:
    """The bound the published JSON schema puts on a field (a map's values for logit_bias)."""
    node = model.model_json_schema()["properties"][name]
    options = node.get("anyOf", [node])
    found = [o.get("additionalProperties", o) for o in options if o.get("type") != "null"]
    assert len(found) == 1, found
    values: dict = {"low": None, "high": None, "low_open": False, "high_open": False}
    for key, (side, open_) in _KEYS.items():
        if key in found[0]:
            values[side] = found[0][key]
            values[f"{side}_open"] = open_
    return Bound(**values)


def test_every_bound_is_carried_by_the_schema():
    assert set(CARRIERS) == set(BOUNDS)


@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_the_schema_bounds_equal_the_table(field):
    for model, name in CARRIERS[field]:
        assert schema_bound(model, name) == BOUNDS[field], (model.__name__, name)


def _value(field: str, number: float) -> dict:
    if field == "logit_bias":
        return {"logit_bias": {5: number}}
    return {field: int(number) if isinstance(BOUNDS[field].low, int) and
            isinstance(BOUNDS[field].high, int | None) else number}


@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_sampling_params_take_the_closed_ends_and_refuse_past_them(field):
    bound = BOUNDS[field]
    for end, open_, step in ((bound.low, bound.low_open, -1), (bound.high, bound.high_open, 1)):
        if end is None:
            continue
        past = end + step * (1 if isinstance(end, int) else 1e-3)
        with pytest.raises(InvalidParameter, match=field):
            SamplingParams(**_value(field, end if open_ else past))
        if not open_:
            SamplingParams(**_value(field, end))


def test_a_penalty_the_table_refuses_is_a_400_before_it_reaches_the_engine():
    """The disagreement this table ended: the schema took any positive repetition_penalty."""
    with pytest.raises(APIError) as error:
        parse(CompletionRequest, b'{"prompt": "a", "repetition_penalty": 0.001}')
    assert error.value.status == 400 and error.value.param == "repetition_penalty"
