"""KV-cache rollback: logits after rollback + re-extend equal a fresh forward (float32)."""

import pytest
import torch
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig

from specdec.models import HFCausalLM, HFSeq2SeqLM, LanguageModel, StaticCausalLM, wrap
from tiny import tiny_llama, tiny_t5

TOLERANCE = 1e-5


def tiny_gemma3(sliding_window: int = 4):
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512)
    return Gemma3ForCausalLM(config).float().eval()


# unsharpened T5: logits of order 1, so an absolute tolerance of 1e-5 means something
MODELS = {"llama": tiny_llama, "llama-dynamic": tiny_llama, "t5": lambda: tiny_t5(sharpen=False),
          "gemma3-sliding-window-4": tiny_gemma3}
RUNNERS = {"llama": StaticCausalLM, "llama-dynamic": HFCausalLM, "t5": HFSeq2SeqLM,
           "gemma3-sliding-window-4": HFCausalLM}


def _wrap(name: str) -> LanguageModel:
    return wrap(MODELS[name](), runtime="dynamic" if name.endswith("-dynamic") else "auto")


@pytest.fixture(params=list(MODELS), scope="module")
def model(request) -> LanguageModel:
    model = _wrap(request.param)
    model.test_name = request.param
    return model


def _fresh_logits(model, prompt, continuation):
    """Logits over `continuation` from a brand-new cache (prefill + one extend)."""
    context = model.prefill(prompt)
    return model.extend(torch.cat([context[:, -1:], continuation], dim=1))


def test_adapters_follow_the_protocol(model):
    assert isinstance(model, LanguageModel)
    assert type(model) is RUNNERS[model.test_name]
    assert model.vocab_size == 64
    assert model.device == torch.device("cpu")


@pytest.mark.parametrize("drop", [1, 3, 6])
def test_rollback_then_extend_equals_fresh_forward(model, drop):
    gen = torch.Generator().manual_seed(drop)
    prompt = torch.randint(0, 64, (1, 9), generator=gen)
    tokens = torch.randint(0, 64, (1, 8), generator=gen)
    replacement = torch.randint(0, 64, (1, 4), generator=gen)

    context = model.prefill(prompt)
    model.extend(torch.cat([context[:, -1:], tokens], dim=1))  # cache: ... + pending + tokens
    before = model.cached_length
    model.rollback(drop)
    assert model.cached_length == before - drop
    # the cache now ends after tokens[:, :8 - drop]; continue with the last kept token
    kept = tokens[:, : 8 - drop]
    last = kept[:, -1:] if kept.shape[1] else context[:, -1:]
    if kept.shape[1]:
        model.rollback(1)  # make the last kept token pending again
    logits = model.extend(torch.cat([last, replacement], dim=1))

    fresh = _fresh_logits(model, prompt, torch.cat([tokens[:, : 8 - drop], replacement], dim=1))
    torch.testing.assert_close(logits, fresh[:, -logits.shape[1]:], atol=TOLERANCE, rtol=0)


def test_multi_token_extend_matches_one_at_a_time(model):
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    tokens = torch.tensor([[11, 12, 13, 14, 15, 16]])
    context = model.prefill(prompt)
    block = model.extend(torch.cat([context[:, -1:], tokens], dim=1))
    context = model.prefill(prompt)
    singles = [model.extend(t.view(1, 1)) for t in torch.cat([context[:, -1:], tokens], dim=1)[0]]
    torch.testing.assert_close(block, torch.cat(singles, dim=1), atol=TOLERANCE, rtol=0)


def test_rollback_zero_holds_where_crop_0_empties_the_cache(model, monkeypatch):
    """rollback(0) is a no-op whatever the cache library does with crop(-0) == crop(0).

    transformers 4.5x read crop(0) as "keep 0 positions": emulate that edge case, so the
    test fails for an adapter that passes 0 through.
    """
    def crop_like_4_5x(cache, amount):
        if amount == 0:
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[..., :0, :], layer.values[..., :0, :]
            return
        original(cache, amount)

    original = DynamicCache.crop
    monkeypatch.setattr(DynamicCache, "crop", crop_like_4_5x)
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    continuation = torch.tensor([[11, 12, 13]])
    context = model.prefill(prompt)
    model.extend(torch.cat([context[:, -1:], continuation[:, :1]], dim=1))
    length = model.cached_length
    model.rollback(0)
    assert model.cached_length == length
    logits = model.extend(continuation[:, 1:])
    monkeypatch.setattr(DynamicCache, "crop", original)
    fresh = _fresh_logits(model, prompt, continuation)
    torch.testing.assert_close(logits, fresh[:, -2:], atol=TOLERANCE, rtol=0)


def test_rollback_bounds(model):
    model.prefill(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError):
        model.rollback(model.cached_length + 1)
    with pytest.raises(ValueError):
        model.rollback(-1)


def test_rollback_zero_keeps_the_cache(model):
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    context = model.prefill(prompt)
    expected = model.extend(torch.cat([context[:, -1:], torch.tensor([[5, 3]])], dim=1))
    model.rollback(3)  # back to the prompt: the pending token and both tokens dropped
    before = model.cached_length
    model.rollback(0)
    assert model.cached_length == before
    again = model.extend(torch.cat([context[:, -1:], torch.tensor([[5, 3]])], dim=1))
    torch.testing.assert_close(again, expected, atol=TOLERANCE, rtol=0)


def test_last_returns_the_last_positions_only(model):
    prompt = torch.tensor([[2, 7, 1, 8, 2, 8]])
    context = model.prefill(prompt)
    block = torch.cat([context[:, -1:], torch.tensor([[1, 8, 2]])], dim=1)
    full = model.extend(block)
    model.rollback(4)
    tail = model.extend(block, last=2)
    assert tail.shape == (1, 2, 64)
    torch.testing.assert_close(tail, full[:, -2:], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["llama", "llama-dynamic", "gemma3-sliding-window-4"])
def test_cached_decoding_matches_a_cache_free_forward(name):
    model = _wrap(name)
    sequence = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(5))
    context = model.prefill(sequence[:, :4])
    pieces = [model.extend(torch.cat([context[:, -1:], sequence[:, 4:7]], dim=1))]
    model.rollback(2)  # keep sequence[:, :5]; sequence[:, 5] becomes pending again
    pieces.append(model.extend(sequence[:, 5:]))
    logits = torch.cat([pieces[0][:, :2], pieces[1]], dim=1)
    with torch.inference_mode():
        reference = model.model(input_ids=sequence).logits.float()[:, 3:]
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_many_rollbacks_to_the_same_slots_equal_a_fresh_forward():
    """Static cache: slots overwritten again and again still give a fresh forward's logits."""
    model = wrap(tiny_llama())
    assert isinstance(model, StaticCausalLM)
    gen = torch.Generator().manual_seed(11)
    prompt = torch.randint(0, 64, (1, 7), generator=gen)
    context = model.prefill(prompt)
    kept, pending = prompt[:, :-1], context[:, -1:]
    for _ in range(30):
        block = torch.randint(0, 64, (1, int(torch.randint(1, 6, (1,), generator=gen))),
                              generator=gen)
        model.extend(torch.cat([pending, block], dim=1))
        keep = int(torch.randint(0, block.shape[1] + 1, (1,), generator=gen))
        model.rollback(block.shape[1] - keep)  # cache: kept + pending + block[:keep]
        sequence = torch.cat([kept, pending, block[:, :keep]], dim=1)
        kept, pending = sequence[:, :-1], sequence[:, -1:]
        model.rollback(1)  # the last kept token becomes pending again
    probe = torch.randint(0, 64, (1, 3), generator=gen)
    logits = model.extend(torch.cat([pending, probe], dim=1))
    fresh = _fresh_logits(wrap(tiny_llama()), torch.cat([kept, pending], dim=1), probe)
    assert model.cached_length == kept.shape[1] + 4
    torch.testing.assert_close(logits, fresh, atol=TOLERANCE, rtol=0)


def test_static_cache_grows_past_its_capacity_and_keeps_what_it_held():
    model = wrap(tiny_llama())
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 64, (1, 200), generator=gen)
    context = model.prefill(prompt, reserve=1)
    capacity = model.cache.capacity
    steps = [model.extend(context[:, -1:])]
    tokens = torch.randint(0, 64, (1, capacity), generator=gen)
    for block in tokens.split(50, dim=1):  # crosses the capacity inside a block
        steps.append(model.extend(block))
    assert model.cache.capacity > capacity
    fresh = wrap(tiny_llama())
    reference = _fresh_logits(fresh, prompt, tokens)
    torch.testing.assert_close(torch.cat(steps, dim=1), reference, atol=1e-4, rtol=0)
