from specdec.detokenize import TextStream


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
    assert stream.text == "abCé"
