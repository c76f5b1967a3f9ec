"""One row's failure stays its own: innocent rows go on token for token, setup is all or
nothing, the KV cache keeps to its budget, and a prompt prefilled in pieces between steps
changes nobody's output (float32, greedy: bit-for-bit comparisons)."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.batch import BatchDecoder, RowFailure
from specdec.control.auto import GammaController
from specdec.drafters.ngram import NgramDrafter
from specdec.models import wrap
from specdec.runtime.rows import CacheBudgetError, SingleRow, StaticRows, make_rows
from specdec.verify_rows import RowsVerdict
from tiny import tiny_llama

PROMPTS = [[3, 17, 9, 3, 17], [5] * 30 + [7, 8], [11, 2, 30, 30, 2, 30, 30, 2], [9, 4]]
GREEDY = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def decoder() -> SpeculativeDecoder:
    return SpeculativeDecoder(wrap(tiny_llama(vocab_size=64, seed=0)), NgramDrafter(),
                              GammaController)


def run(loop: BatchDecoder, added: list) -> tuple[dict[int, list[int]], dict[int, Exception]]:
    """Step until every row left: tokens per row and the rows that failed."""
    index = {id(s): i for i, s in enumerate(added)}
    tokens: dict[int, list[int]] = {i: [] for i in range(len(added))}
    failed: dict[int, Exception] = {}
    while loop.sequences:
        for sequence, event in loop.step():
            if isinstance(event, RowFailure):
                failed[index[id(sequence)]] = event.error
            else:
                tokens[index[id(sequence)]].extend(event.tokens)
    return tokens, failed


def fail_at(sequence, method: str, call: int) -> None:
    """Make sequence.method raise on its `call`-th call."""
    original, calls = getattr(sequence, method), [0]

    def broken(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise RuntimeError(f"{method} broke")
        return original(*args, **kwargs)

    setattr(sequence, method, broken)


@pytest.mark.parametrize("method", ["judge", "draft", "advance"])
def test_a_failing_row_leaves_alone_and_the_others_are_untouched(decoder, method) -> None:
    loop = decoder.batch(make_rows(decoder.target, 4))
    added = loop.add_many([(torch.tensor([p]), GREEDY) for p in PROMPTS])
    fail_at(added[1], method, 3)
    tokens, failed = run(loop, added)
    assert list(failed) == [1] and str(failed[1]) == f"{method} broke"
    assert loop.rows.count == 0 and not loop.sequences
    # the innocent rows: as in a batch that never had the bad row
    alone = decoder.batch(make_rows(decoder.target, 4))
    kept = [p for i, p in enumerate(PROMPTS) if i != 1]
    want, _ = run(alone, alone.add_many([(torch.tensor([p]), GREEDY) for p in kept]))
    assert [tokens[i] for i in (0, 2, 3)] == [want[0], want[1], want[2]]
    assert all(len(t) == GREEDY.max_new_tokens for t in want.values())


def test_a_row_that_breaks_the_shared_verification_leaves_alone(decoder, monkeypatch) -> None:
    """Every row is verified in one vectorized call read back once per step; a row whose
    inputs make that call raise is verified alone, fails alone, and the others' tokens are
    those of a batch without it."""
    loop = decoder.batch(make_rows(decoder.target, 4))
    added = loop.add_many([(torch.tensor([p]), GREEDY) for p in PROMPTS])
    original, calls = added[1].prepare, [0]

    def bogus(*args):
        calls[0] += 1
        check = original(*args)
        # a rule no verification knows (AcceptanceRule itself refuses to be one)
        bad = SimpleNamespace(name="bogus", key=0)
        return replace(check, rule=bad) if calls[0] == 3 else check

    added[1].prepare = bogus
    reads, to_host = [0], RowsVerdict.to_host

    def counted(self, *args):
        reads[0] += 1
        return to_host(self, *args)

    monkeypatch.setattr(RowsVerdict, "to_host", counted)
    steps = 0
    index = {id(s): i for i, s in enumerate(added)}
    tokens: dict[int, list[int]] = {i: [] for i in range(4)}
    failed = {}
    while loop.sequences:
        steps += 1
        for sequence, event in loop.step():
            if isinstance(event, RowFailure):
                failed[index[id(sequence)]] = event.error
            else:
                tokens[index[id(sequence)]].extend(event.tokens)
    assert list(failed) == [1] and "bogus" in str(failed[1])
    # one read back per step; the broken step's shared call raised before its read back, then
    # each row alone: the three others read back theirs
    assert reads[0] == steps - 1 + 3
    alone = decoder.batch(make_rows(decoder.target, 4))
    kept = [p for i, p in enumerate(PROMPTS) if i != 1]
    want, _ = run(alone, alone.add_many([(torch.tensor([p]), GREEDY) for p in kept]))
    assert [tokens[i] for i in (0, 2, 3)] == [want[0], want[1], want[2]]


def test_a_library_caller_gets_its_rows_error(decoder, monkeypatch) -> None:
    monkeypatch.setattr("specdec.sequence.Sequence.judge",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("judge broke")))
    with pytest.raises(RuntimeError, match="judge broke"):
        decoder.generate(PROMPTS[0], GREEDY)


@pytest.mark.parametrize("batched", [True, False])
def test_setup_is_all_or_nothing(decoder, monkeypatch, batched) -> None:
    rows = make_rows(decoder.target, 4) if batched else SingleRow(decoder.target)
    loop = decoder.batch(rows)
    if batched:
        loop.add(torch.tensor([PROMPTS[0]]), GREEDY)
    before = (rows.count, len(loop.sequences))
    original, made = BatchDecoder._sequence, [0]

    def second_fails(self, *args):
        made[0] += 1
        if made[0] == 2:
            raise ValueError("bad generator")
        return original(self, *args)

    monkeypatch.setattr(BatchDecoder, "_sequence", second_fails)
    requests = [(torch.tensor([p]), GREEDY) for p in PROMPTS[1:3 if batched else 2]]
    if not batched:  # one row: the first setup is the one that fails
        made[0] = 1
    with pytest.raises(ValueError, match="bad generator"):
        loop.add_many(requests)
    assert (rows.count, len(loop.sequences)) == before
    in_use = {id(s.drafter) for s in loop.sequences}
    assert not in_use & {id(d) for d in loop._drafters}  # the failed ones' drafters are free
    monkeypatch.setattr(BatchDecoder, "_sequence", original)
    joined = loop.add(torch.tensor([PROMPTS[3]]), GREEDY)  # nothing was left taken
    assert joined in loop.sequences and rows.count == before[0] + 1


def test_a_prompt_prefilled_in_pieces_between_steps_changes_nobody(decoder) -> None:
    """Rows 0-1 decode while row 2's prompt joins 5 positions per step: every row's tokens
    equal those of a batch where all three were prefilled at once."""
    long_prompt = [(7 * i) % 60 + 1 for i in range(45)]
    at_once = decoder.batch(make_rows(decoder.target, 4))
    want, _ = run(at_once, at_once.add_many([(torch.tensor([p]), GREEDY)
                                             for p in (PROMPTS[0], PROMPTS[2], long_prompt)]))
    loop = decoder.batch(make_rows(decoder.target, 4))
    added = loop.add_many([(torch.tensor([p]), GREEDY) for p in (PROMPTS[0], PROMPTS[2])])
    joining = loop.begin(torch.tensor([long_prompt]), GREEDY)
    index = {id(s): i for i, s in enumerate(added)}
    tokens: dict[int, list[int]] = {0: [], 1: [], 2: []}
    pieces = 0
    while loop.sequences:
        if joining is not None:
            pieces += 1
            loop.prefill(joining, 5)
            if joining.finished:
                index[id(loop.join(joining, GREEDY))] = 2
                joining = None
        for sequence, event in loop.step():
            tokens[index[id(sequence)]].extend(event.tokens)
    assert pieces == 9  # 44 positions, 5 per step
    assert tokens == want


def test_rows_keep_the_kv_cache_within_its_budget(decoder) -> None:
    target = decoder.target
    one = StaticRows(target, 4).cache_bytes(1, 256)  # one row of 256 positions
    rows = StaticRows(target, 4, max_bytes=3 * one)
    prompt = torch.tensor([PROMPTS[1]])  # 32 tokens
    assert rows.fits(32, 200) and not rows.fits(32, 600)  # 512 positions + a prefill: 3 rows
    rows.add(prompt, reserve=150)
    rows.add(prompt, reserve=150)
    assert rows.cache is not None and rows.cache.rows * rows.cache.capacity <= 3 * 256
    assert not rows.fits(32, 200)  # a third row and its prefill: 4 rows' worth
    with pytest.raises(CacheBudgetError, match="MiB of KV cache"):
        rows.add(prompt, reserve=150)
        rows.add(prompt, reserve=150)
    while rows.count:
        rows.remove(0)
    assert rows.cache is None  # the memory goes back when the last row leaves
    assert rows.fits(32, 200)


def test_a_budgeted_batch_decodes_what_an_unbounded_one_does(decoder) -> None:
    """Rows allocated as they are needed (grown, copied, freed) give the same tokens."""
    bounded = decoder.batch(make_rows(decoder.target, 4, max_bytes=1 << 20))
    free = decoder.batch(make_rows(decoder.target, 4))
    got, _ = run(bounded, [bounded.add(torch.tensor([p]), GREEDY) for p in PROMPTS])
    want, _ = run(free, free.add_many([(torch.tensor([p]), GREEDY) for p in PROMPTS]))
    assert got == want
