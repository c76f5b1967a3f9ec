"""Tree verification in the static runner: a node's logits are the bits of the line that
verifies its root path, and the accepted path's keys and values, moved into place, serve the
next forwards as if the path had been extended as a line."""

import pytest
import torch

from specdec.language_model import LanguageModel
from specdec.models import wrap
from specdec.runtime.tree_attention import root_path, tree_depths
from tiny import small_decoder, tiny_llama

PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 6, 0, 9, 10]  # fan-outs 1..3, depths 0..4


def _leaves(parents: list[int]) -> list[int]:
    return [i for i in range(len(parents)) if i not in parents]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("prompt_length", [5, 64, 70, 130])  # before, at, past block edges
def test_tree_logits_are_the_bits_of_each_root_path_as_a_line(kind, prompt_length):
    runner = wrap(small_decoder(kind, torch.float32))
    generator = torch.Generator().manual_seed(prompt_length)
    prompt = torch.randint(0, 96, (1, prompt_length), generator=generator)
    tokens = torch.randint(0, 96, (1, len(PARENTS)), generator=generator)
    runner.prefill(prompt)
    base = runner.cached_length
    tree = runner.extend_tree(tokens, PARENTS)
    assert tree.shape == (1, len(PARENTS), 96) and runner.cached_length == base + len(PARENTS)
    for leaf in _leaves(PARENTS):
        path = root_path(PARENTS, leaf)
        runner.rollback(runner.cached_length - base)
        line = runner.extend(tokens[:, path])
        for j, node in enumerate(path):
            assert torch.equal(line[0, j], tree[0, node]), (leaf, node)


def test_a_line_given_as_a_tree_is_the_line_bit_for_bit():
    runner = wrap(small_decoder("qwen2", torch.float32))
    prompt = torch.randint(0, 96, (1, 90), generator=torch.Generator().manual_seed(3))
    tokens = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(4))
    runner.prefill(prompt)
    line = runner.extend(tokens)
    runner.rollback(9)
    assert torch.equal(runner.extend_tree(tokens, list(range(-1, 8))), line)


def test_accepted_path_is_moved_not_recomputed_and_the_rest_forgotten():
    runner = wrap(small_decoder("llama", torch.float32))
    generator = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, 96, (1, 66), generator=generator)
    tokens = torch.randint(0, 96, (1, len(PARENTS)), generator=generator)
    after = torch.randint(0, 96, (1, 6), generator=generator)
    for leaf in _leaves(PARENTS):
        path = root_path(PARENTS, leaf)
        runner.prefill(prompt)
        base = runner.cached_length
        runner.extend_tree(tokens, PARENTS)
        runner.accept_path(path)
        assert runner.cached_length == base + len(path)
        got = runner.extend(after)
        runner.rollback(runner.cached_length - base)
        expected = runner.extend(torch.cat([tokens[:, path], after], 1))[:, len(path):]
        assert torch.equal(got, expected), leaf
        # the moved keys and values are the line's own (no recomputation)
        runner.rollback(runner.cached_length - base)
        runner.extend(tokens[:, path])
        line_keys = [k[:, :, base:base + len(path)].clone() for k in runner.cache.keys]
        runner.rollback(len(path))
        runner.extend_tree(tokens, PARENTS)
        runner.accept_path(path)
        for layer, keys in enumerate(line_keys):
            assert torch.equal(runner.cache.keys[layer][:, :, base:base + len(path)], keys)


def test_accept_path_needs_a_tree_and_its_own_nodes():
    runner = wrap(tiny_llama())
    runner.prefill(torch.tensor([[1, 2, 3]]))
    with pytest.raises(RuntimeError):
        runner.accept_path([0])
    runner.extend_tree(torch.tensor([[4, 5, 6]]), [-1, 0, 0])
    with pytest.raises(ValueError):
        runner.accept_path([0, 3])
    with pytest.raises(ValueError):
        runner.extend_tree(torch.tensor([[4, 5]]), [-1, 1])  # a parent after its child


def test_the_dynamic_runner_verifies_lines_only_and_says_so():
    runner = wrap(tiny_llama(), runtime="dynamic")
    assert isinstance(runner, LanguageModel) and not runner.verifies_trees
    static = wrap(tiny_llama())
    assert isinstance(static, LanguageModel) and static.verifies_trees
    runner.prefill(torch.tensor([[1, 2, 3]]))
    with pytest.raises(NotImplementedError):
        runner.extend_tree(torch.tensor([[4, 5, 6]]), [-1, 0, 0])
    line = runner.extend_tree(torch.tensor([[4, 5, 6]]), [-1, 0, 1])
    runner.accept_path([0, 1])
    assert runner.cached_length == 4 and line.shape == (1, 3, 64)


def test_depths_and_paths():
    assert tree_depths(PARENTS) == [0, 1, 1, 2, 2, 2, 3, 3, 4, 1, 2, 3]
    assert root_path(PARENTS, 8) == [0, 1, 3, 6, 8]
