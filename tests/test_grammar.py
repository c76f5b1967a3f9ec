"""GrammarMatcher: masks along drafts and tree paths, the state left at the output."""

from __future__ import annotations

import torch

from constraint_fixtures import chars_tokenizer
from specdec import Constraint
from specdec.grammar import GrammarCompiler

CHARS = "ab01"


def _ids(text: str) -> list[int]:
    return [3 + CHARS.index(c) for c in text]


def _allowed(mask: torch.Tensor) -> str:
    return "".join(CHARS[i - 3] for i in mask.nonzero().flatten().tolist() if i >= 3)


def _matcher(regex: str, stops: set[int] | None = None):
    compiler = GrammarCompiler(chars_tokenizer(CHARS), 7)
    return compiler.matcher(Constraint.regex(regex), stops or set())


def test_masks_along_drafts_stop_at_the_first_refused_one():
    grammar = _matcher("a[01]b1*")
    masks, valid = grammar.masks_along(_ids("a0a1"))  # the second "a" is refused
    assert valid == 2
    assert [_allowed(m) for m in masks] == ["a", "01", "b", "b", "b"]
    assert grammar._path == []  # back at the output
    assert _allowed(grammar.mask_at([])) == "a"


def test_tree_masks_follow_each_root_path():
    grammar = _matcher("(a0|b1)a*")
    tokens = [0] + _ids("ab01")  # node 0: the pending token (the output's end)
    parents = [-1, 0, 0, 1, 2]  # a, b under the root; 0 under a; 1 under b
    masks = grammar.tree_masks(tokens, parents)
    assert [_allowed(m) for m in masks] == ["ab", "0", "1", "a", "a"]
    refused = grammar.tree_masks([0] + _ids("1a"), [-1, 0, 1])  # "1" refused at the root
    assert [_allowed(m) for m in refused] == ["ab", "ab", "ab"]
    assert grammar._path == []


def test_output_commits_and_stops():
    grammar = _matcher("ab", stops={2})
    assert grammar.accept_output(_ids("a")) == (1, False)
    assert grammar.accept_output(_ids("b") + _ids("a")) == (1, True)  # complete after "b"
    accepting = _matcher("a+", stops={2})
    accepting.accept_output(_ids("a"))
    assert bool(accepting.mask_at([])[2])  # the stop token, where the grammar accepts
    assert accepting.accept_output([2, 3]) == (1, False)  # kept, ends the output
    assert grammar.forced(5) == [] and _matcher("ab01").forced(3) == _ids("ab0")
