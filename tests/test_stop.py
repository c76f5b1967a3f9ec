"""Stop strings over streamed pieces: split anywhere, the released text is the same."""

from __future__ import annotations

import random

import pytest

from specdec.stop import StopMatcher


def run(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(p) for p in pieces) + matcher.flush()
    return out, matcher.stopped


def expected(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@pytest.mark.parametrize("text, stops", [
    ("hello world. bye", ["."]),
    ("abcabcabd tail", ["abd"]),  # a held-back prefix that fails, then a real match
    ("no stop here", ["xyz", "zz"]),
    ("aaab", ["aab"]),  # overlapping candidate prefixes
    ("one\n\ntwo", ["\n\n", "two"]),  # the earliest match wins, whichever string it is
    ("stop at the very start", ["stop"]),
    ("ends with a prefix st", ["stop"]),  # held back, then released by flush
])
def test_any_split_gives_the_unsplit_result(text: str, stops: list[str]) -> None:
    rng = random.Random(0)
    want = expected(text, stops)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(6, len(text) - 1))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert run(pieces, stops) == want, pieces
    assert run(list(text), stops) == want  # one character per token


def test_text_that_may_start_a_stop_is_held_back_until_decided() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.push("result </e") == "result "
    assert matcher.pending == "</e"
    assert matcher.push("nd") == ""
    assert matcher.push("x") == "</endx"  # not a stop after all: released
    assert matcher.push(" more </end> never sent") == " more "
    assert matcher.stopped
    assert matcher.push("later") == "" and matcher.flush() == ""


def test_no_stop_strings_releases_everything_at_once() -> None:
    matcher = StopMatcher([])
    assert matcher.push("abc") == "abc"
    assert matcher.push("") == ""
    assert not matcher.stopped
