import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from specdec.detokenize import CONTEXT_TOKENS, MAX_PENDING, TextStream


class _Tokenizer:
    """Decodes ids through a table; id 9 rewrites earlier text (as some tokenizers do)."""

    table = {1: "ab", 2: "c", 3: "\ufffd", 4: "é"}

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(self.table.get(i, "") for i in ids)
        return text.replace("c", "C") if 9 in ids else text


def test_emits_only_new_text_and_holds_back_partial_characters():
    stream = TextStream(_Tokenizer())
    assert stream.push([1]) == "ab"
    assert stream.push([2]) == "c"
    assert stream.push([3]) == ""  # incomplete UTF-8 sequence: wait for more
    assert stream.push([]) == ""
    assert stream.text == "abc"


def test_rewritten_earlier_text_is_not_emitted_twice():
    stream = TextStream(_Tokenizer())
    assert stream.push([1, 2]) == "abc"
    # the decoding changed after "ab": "ab", already shown, is not repeated
    assert stream.push([9]) == "C"
    assert stream.push([4]) == "é"
    assert stream.text == "abcCé"  # what was emitted


# --- real tokenizer types: byte-level BPE (GPT-2, Qwen) and SentencePiece-style -------------

WORDS = ["def", " quick", "sort", "(", "arr", "):", "\n", "    ", " é", "été", " 中文",
         "字", "😀", " 🚀x", "naïve", "ß", " the", "Ω", "\t", "  "]


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    """All 256 bytes plus merges that form whole and partial multi-byte characters."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    merges = []
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for word in ["中文", "é", "😀", "quick", " the", "sort", "ï"]:
        pieces = list(byte_level.pre_tokenize_str(word)[0][0])
        # merge left to right, but stop one byte short for some: partial characters
        stop = len(pieces) - (1 if word in ("中文", "😀") else 0)
        merged = pieces[0]
        for piece in pieces[1:stop]:
            merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def _metaspace() -> PreTrainedTokenizerFast:
    """SentencePiece-style words: '▁word' decodes to ' word' except at the start."""
    words = ["▁def", "▁the", "sort", "▁é", "中", "▁", "x", "(", ")", "▁quick", "ß"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="x"))
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=core)


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))


def _stream(tokenizer, ids: list[int], rng: random.Random) -> str:
    """Push ids in random blocks of 1-3 tokens; the concatenated pieces."""
    stream, pieces, i = TextStream(tokenizer), [], 0
    while i < len(ids):
        block = rng.randint(1, 3)
        pieces.append(stream.push(ids[i:i + block]))
        i += block
    assert "".join(pieces) == stream.text
    return stream.text


@pytest.mark.parametrize("seed", range(4))
def test_incremental_equals_full_decoding_of_encoded_text(seed):
    tokenizer = _byte_level_bpe()
    rng = random.Random(seed)
    for _ in range(50):
        ids = tokenizer.encode(_random_text(rng), add_special_tokens=False)
        assert _stream(tokenizer, ids, rng) == tokenizer.decode(ids)


@pytest.mark.parametrize("seed", range(4))
def test_incremental_equals_full_decoding_of_random_ids(seed):
    """Any id sequence, including bytes that never form a character: the stream emits what
    full decoding shows, except an incomplete character at the very end (held back)."""
    tokenizer = _byte_level_bpe()
    rng = random.Random(seed)
    # mostly multi-byte material: lead bytes, continuation bytes, merged partial characters
    pool = [tokenizer.convert_tokens_to_ids(t) for t in sorted(tokenizer.get_vocab())
            if len(t) > 1 or ord(t) >= 0x100]
    for _ in range(100):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 60))]
        full = tokenizer.decode(ids)
        got = _stream(tokenizer, ids, rng)
        assert full.startswith(got)
        held = full[len(got):]  # the last tokens, whose text ends in an incomplete character
        assert held == "" or held.endswith("\ufffd")
        assert len(held) <= 3 * 4  # at most 3 tokens' text (each merged token <= 4 chars)


@pytest.mark.parametrize("seed", range(3))
def test_incremental_equals_full_decoding_with_sentencepiece_spaces(seed):
    tokenizer = _metaspace()
    rng = random.Random(seed)
    for _ in range(50):
        ids = [rng.randrange(11) for _ in range(rng.randint(1, 40))]
        assert _stream(tokenizer, ids, rng) == tokenizer.decode(ids)


class _Counting:
    """Wraps a tokenizer; records how many tokens each decode call gets."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_decode_work_per_token_does_not_grow_with_output_length():
    tokenizer = _Counting(_byte_level_bpe())
    ids = tokenizer.tokenizer.encode("".join(WORDS) * 40, add_special_tokens=False)
    assert len(ids) > 1000
    stream = TextStream(tokenizer)
    for token in ids:
        stream.push([token])
    assert stream.text == tokenizer.tokenizer.decode(ids)
    # one token per push: each decode sees the context plus at most the pending tokens
    assert max(tokenizer.lengths) <= CONTEXT_TOKENS + MAX_PENDING
    assert len(tokenizer.lengths) <= 2 * len(ids)


@pytest.mark.real
def test_incremental_equals_full_decoding_with_qwen_tokenizer():
    from transformers import AutoTokenizer

    from specdec.models.fetch import cache_dir
    copies = sorted((cache_dir() / "converted").glob("qwen2.5-coder-0.5b*/tokenizer.json"))
    if not copies:
        pytest.skip("no converted Qwen copy in the model cache (run specdec generate once)")
    tokenizer = AutoTokenizer.from_pretrained(copies[0].parent)
    rng = random.Random(0)
    for _ in range(100):
        ids = tokenizer.encode(_random_text(rng), add_special_tokens=False)
        assert _stream(tokenizer, ids, rng) == tokenizer.decode(ids)
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 60))]
        full = tokenizer.decode(ids, skip_special_tokens=True)
        got = _stream(tokenizer, ids, rng)
        assert full.startswith(got)
        assert full[len(got):] == "" or full[len(got):].endswith("\ufffd")
