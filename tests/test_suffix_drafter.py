"""The suffix index and drafter: counts, matching, best-first trees sized by the match."""

import pytest
import torch

from specdec.drafters.factory import build_drafter, parse_draft, validate_spec
from specdec.drafters.suffix import SharedOutputs, SuffixConfig, SuffixDrafter, parse_suffix
from specdec.drafters.suffix_index import NODE_BYTES, SuffixIndex
from specdec.drafters.tree import DraftTree, TreeDrafter
from specdec.errors import UsageError
from specdec.sampling import SamplingParams

TEXT = [1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 6, 7, 1, 2, 3, 4, 5, 8, 0, 1, 2, 3]
PARAMS, GEN = SamplingParams(), torch.Generator()


def _drafter(config: SuffixConfig | None = None, text=TEXT) -> SuffixDrafter:
    drafter = SuffixDrafter(config)
    drafter.begin(torch.tensor([text]))
    return drafter


def test_index_counts_every_short_substring():
    index = SuffixIndex(depth=3)
    index.start()
    index.extend([1, 2, 1, 2])
    node, length = index.match([5, 1, 2], longest=8)
    assert length == 2  # "1 2" was seen with a continuation ("1"); "5 1 2" never
    tree = index.expand(node, nodes=4, depth=4, min_prob=0.0)
    assert tree.tokens == [1] and tree.probs == [1.0]  # depth 3 bounds "1 2 1"
    assert index.match([7], longest=8) == (0, 0)


def test_tree_is_best_first_with_empirical_probabilities():
    tree = _drafter(SuffixConfig(factor=4)).propose_tree(torch.tensor([TEXT]), 16, 8,
                                                         PARAMS, GEN)
    assert isinstance(tree, DraftTree)
    # after "1 2 3" (3 tokens matched, budget 12): "4" always; then "5" twice, "6" once
    assert tree.tokens[0, :3].tolist() == [4, 5, 6] and tree.parents[:3] == [-1, 0, 0]
    # "4 5" seen twice of three, continued by "9" or "8"; "4 6" once: each later node 1/3
    assert tree.score == pytest.approx(1 + 2 / 3 + 1 / 3 + 9 / 3)
    assert all(p < i for i, p in enumerate(tree.parents))
    assert tree.line().tokens[0, :2].tolist() == [4, 5]


def test_tree_size_follows_the_match_length_and_the_caps():
    context = torch.tensor([TEXT])
    assert _drafter().propose_tree(context, 16, 8, PARAMS, GEN).size == 3  # factor 1 x 3
    assert _drafter(SuffixConfig(factor=4)).propose_tree(context, 5, 8, PARAMS, GEN).size == 5
    deep = _drafter(SuffixConfig(factor=8)).propose_tree(context, 16, 2, PARAMS, GEN)
    assert max(_depths(deep.parents)) == 1  # depth 2 at most
    strict = _drafter(SuffixConfig(factor=8, min_prob=0.5))
    assert strict.propose_tree(context, 16, 8, PARAMS, GEN).tokens[0].tolist()[:2] == [4, 5]
    assert _drafter().propose_tree(torch.tensor([[42, 43]]), 16, 8, PARAMS, GEN).size == 0


def _depths(parents):
    depths = []
    for p in parents:
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def test_line_proposal_follows_the_most_frequent_child():
    drafter = _drafter()
    line = drafter.propose(torch.tensor([TEXT]), 5, PARAMS, GEN)
    assert line.tokens[0].tolist() == [4, 5, 9, 1, 2] and line.probs is None
    assert drafter.propose(torch.tensor([TEXT]), 0, PARAMS, GEN).length == 0


def test_the_index_follows_the_context_and_rebuilds_on_a_new_one():
    drafter = _drafter()
    grown = TEXT + [4, 5]
    assert drafter.propose(torch.tensor([grown]), 2, PARAMS, GEN).tokens[0].tolist() == [9, 1]
    other = [7, 7, 8, 7, 7]
    assert drafter.propose(torch.tensor([other]), 1, PARAMS, GEN).tokens[0].tolist() == [8]
    assert drafter.tokens == other


def test_global_index_learns_from_earlier_outputs_and_stays_bounded():
    config = SuffixConfig(global_bytes=40 * 32 * NODE_BYTES)  # room for ~40 tokens
    first = SuffixDrafter(config)
    first.begin(torch.tensor([[50, 51]]))
    first.propose(torch.tensor([[50, 51, 60, 61, 62, 63]]), 1, PARAMS, GEN)  # its output
    second = first.fork()
    assert second.shared is first.shared and isinstance(second, TreeDrafter)
    first.begin(torch.tensor([[1]]))  # its next request publishes the first one's output
    second.begin(torch.tensor([[70, 60, 61]]))
    # nothing in this request's own text follows "60 61", the earlier output does
    line = second.propose(torch.tensor([[70, 60, 61]]), 2, PARAMS, GEN)
    assert line.tokens[0].tolist() == [62, 63]
    shared = SharedOutputs(depth=32, max_bytes=40 * 32 * NODE_BYTES)
    for start in range(0, 400, 20):
        shared.add(list(range(start, start + 20)))
    assert shared.index.bytes <= shared.max_bytes and len(shared.outputs) < 20


def test_specs_parse_and_refuse_nonsense():
    assert parse_draft("suffix").kind == "suffix"
    assert parse_suffix("global:nodes=8:factor=2") == SuffixConfig(
        max_nodes=8, factor=2.0, global_bytes=256 * 2**20)
    assert parse_suffix("global=1").global_bytes == 2**20
    for bad in ("nodes=0", "nodes=x", "factor=-1", "prob=1", "colour=red", "global=0"):
        with pytest.raises(UsageError):
            parse_suffix(bad)
    with pytest.raises(UsageError):
        validate_spec("suffix:nodes=100")
    drafter = build_drafter("suffix:global", target=None, loader=None)  # type: ignore[arg-type]
    assert isinstance(drafter, SuffixDrafter) and drafter.name == "suffix:global"
