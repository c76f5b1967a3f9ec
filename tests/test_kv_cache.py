"""The KV cache's own contract (runtime/kv_cache.py): growth keeps what is cached, rollback and
tree paths check their bounds and move the right slots, a row move copies, and a chunked
prefill writes the bits of a one-shot prefill."""

import pytest
import torch

from specdec.models import wrap
from specdec.runtime.kv_cache import (
    KVCache,
    StaticKVCache,
    prefill_chunks,
    rounded_capacity,
)
from tiny import tiny_llama

LAYERS, HEADS, DIM = 2, 2, 4


def _allocate(rows: int, positions: int) -> StaticKVCache:
    return StaticKVCache(LAYERS, rows, HEADS, DIM, rounded_capacity(positions), torch.float32,
                         torch.device("cpu"))


def _numbered(rows: int, positions: int) -> StaticKVCache:
    """A cache whose every value is distinct: where a value went says where it came from."""
    cache = _allocate(rows, positions)
    for index, tensor in enumerate(cache.keys + cache.values):
        tensor.copy_(torch.arange(tensor.numel(), dtype=torch.float32).view(tensor.shape)
                     + index * tensor.numel())
    return cache


def _filled(lengths: list[int]) -> tuple[KVCache, StaticKVCache]:
    """A KVCache whose rows are copied from a numbered source, and that source."""
    source = _numbered(len(lengths), max(lengths))
    kv = KVCache(_allocate)
    kv.resize(len(lengths), max(lengths))
    kv.add_copied(source, lengths)
    return kv, source


def _slots(cache: StaticKVCache, row: int, slots: list[int]) -> list[torch.Tensor]:
    return [t[row, :, slots] for t in cache.keys + cache.values]


def test_growth_keeps_every_cached_position_of_every_row():
    kv, source = _filled([3, 7])
    assert kv.covers(2, 200) and not kv.covers(3, 10) and not kv.covers(2, 300)
    kv.resize(4, 600)
    assert kv.tensors is not None
    assert (kv.tensors.rows, kv.tensors.capacity) == (4, 768)
    assert kv.lengths == [3, 7]
    for row, length in enumerate([3, 7]):
        for mine, theirs in zip(_slots(kv.tensors, row, list(range(length))),
                                _slots(source, row, list(range(length))), strict=True):
            assert torch.equal(mine, theirs)


def test_rollback_checks_its_bounds_before_changing_anything():
    kv, _ = _filled([3, 5])
    for counts in ([4, 0], [0, -1], [1]):
        with pytest.raises(ValueError):
            kv.rollback(counts)
        assert kv.lengths == [3, 5]
    kv.rollback([3, 2])
    assert kv.lengths == [0, 3]


def test_accept_paths_moves_the_path_into_place_and_refuses_other_nodes():
    kv, _ = _filled([2, 4])
    with pytest.raises(RuntimeError, match="needs a tree extend"):
        kv.accept_paths([[0], [0]])
    kv.advance(4, tree=True)  # trees of 4 nodes: row 0 at slots 2..5, row 1 at 4..7
    assert kv.tensors is not None
    before = [_slots(kv.tensors, 0, [2, 4, 5]), _slots(kv.tensors, 1, [4])]
    for bad in ([[0, 4], [0]], [[0], [-1]], [[0]]):
        with pytest.raises(ValueError):
            kv.accept_paths(bad)
        assert kv.lengths == [6, 8]
    kv.accept_paths([[0, 2, 3], [0]])
    assert kv.lengths == [5, 5]
    after = [_slots(kv.tensors, 0, [2, 3, 4]), _slots(kv.tensors, 1, [4])]
    for was, now in zip(before, after, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(was, now, strict=True))
    with pytest.raises(RuntimeError):  # a tree's paths are accepted once
        kv.accept_paths([[0], [0]])


def test_any_other_change_forgets_the_tree():
    kv, _ = _filled([2])
    kv.advance(3, tree=True)
    kv.rollback([1])
    with pytest.raises(RuntimeError):
        kv.accept_paths([[0]])


def test_remove_moves_the_last_row_into_the_gap():
    kv, source = _filled([2, 3, 5])
    with pytest.raises(IndexError):
        kv.remove(3)
    kv.remove(0)
    assert kv.lengths == [5, 3] and kv.tensors is not None
    for mine, theirs in zip(_slots(kv.tensors, 0, list(range(5))),
                            _slots(source, 2, list(range(5))), strict=True):
        assert torch.equal(mine, theirs)
    kv.free()
    assert kv.count == 0 and kv.tensors is None


def test_chunked_prefill_writes_the_bits_of_a_one_shot_prefill():
    runner = wrap(tiny_llama())
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))
    caches = []
    for chunk in (40, 7):
        cache = runner.new_cache(2, 40)
        prefill_chunks(runner.forward_rows, ids, cache, 0, 40, chunk)
        caches.append(cache)
    whole, chunked = caches
    for mine, theirs in zip(whole.keys + whole.values, chunked.keys + chunked.values,
                            strict=True):
        assert torch.equal(mine[:, :, :40], theirs[:, :, :40])


def test_rows_added_by_prefill_are_cached_to_their_own_lengths():
    runner = wrap(tiny_llama())
    kv = KVCache(runner.new_cache)
    kv.resize(3, 16)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    kv.add_rows(runner.forward_rows, ids, [9, 4], chunk=4)
    kv.add_rows(runner.forward_rows, ids[:1, :2], [2])
    assert kv.lengths == [9, 4, 2]
