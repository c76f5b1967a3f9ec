"""One numerics for every block width, and what it buys, checked the same way for every
runner: row r of a k-token forward or of a batch row is the bits of that token's one-token
forward; speculative greedy output equals plain greedy output, and a seed gives one text
whatever the drafter, γ or batch slot."""

from __future__ import annotations

import torch

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_drafter
from specdec.drafters.model import ModelDrafter

WIDTHS = range(1, 17)
PROMPTS = [[1, 2, 3, 4, 1, 2, 3], [7] * 5, [5, 9, 11, 5, 9, 40, 41], [30, 31, 32, 33, 34, 35]]


def check_greedy_identity(target, draft, spec: str) -> None:
    """`spec`'s drafter ("model": a ModelDrafter over `draft`) at γ 1, 3 and 6 gives plain
    greedy's tokens for every prompt, and accepts some drafts."""
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    accepted = 0
    for prompt in PROMPTS:
        expected = SpeculativeDecoder(target, None).generate(prompt, params).tokens
        for gamma in (1, 3, 6):
            drafter = ModelDrafter(draft) if spec == "model" else \
                build_drafter(spec, target, None)
            got = SpeculativeDecoder(target, drafter, gamma=gamma).generate(prompt, params)
            assert got.tokens == expected, (spec, prompt, gamma)
            accepted += got.stats.accepted
    assert accepted > 0


def check_seeded_identity(target, draft) -> None:
    """Seeded coupled sampling gives plain's text for model and ngram drafters at several γ,
    alone and batched in reversed slots."""
    params = [SamplingParams(temperature=1.0, seed=100 + i, max_new_tokens=20, ignore_eos=True)
              for i in range(len(PROMPTS))]
    plain = SpeculativeDecoder(target, None)
    expected = [plain.generate(p, s).tokens for p, s in zip(PROMPTS, params, strict=True)]
    for drafter, gamma in [(ModelDrafter(draft), 2), (ModelDrafter(draft), 5),
                           (build_drafter("ngram", target, None), 4)]:
        decoder = SpeculativeDecoder(target, drafter, gamma=gamma)
        for prompt, param, tokens in zip(PROMPTS, params, expected, strict=True):
            assert decoder.generate(prompt, param).tokens == tokens
        batched = decoder.generate_batch(PROMPTS[::-1], params[::-1], max_batch_size=4)
        assert [r.tokens for r in batched] == expected[::-1]


def one_token_logits(runner, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of `tokens` fed one at a time after prefilling `prompt`."""
    runner.prefill(prompt)
    return torch.cat([runner.extend(tokens[:, i:i + 1]) for i in range(tokens.shape[1])], 1)


def check_widths(runner) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blocks of 1..16 tokens, and blocks of mixed widths after rollbacks, give the one-token
    forwards' bits; returns (prompt, tokens, their one-token logits) for further checks."""
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 96, (1, 70), generator=generator)  # past one key block
    tokens = torch.randint(0, 96, (1, 16), generator=generator)
    reference = one_token_logits(runner, prompt, tokens)
    base = prompt.shape[1] - 1
    for k in WIDTHS:
        runner.rollback(runner.cached_length - base)
        assert torch.equal(runner.extend(tokens[:, :k]), reference[:, :k]), k
    runner.rollback(runner.cached_length - base)
    runner.extend(tokens[:, :5])
    runner.rollback(3)
    got = torch.cat([runner.extend(tokens[:, 2:9]), runner.extend(tokens[:, 9:16])], 1)
    assert torch.equal(got, reference[:, 2:16])
    return prompt, tokens, reference


def check_batch_rows(single, rows) -> None:
    """Rows of different lengths extended together give each row's one-token bits."""
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 96, (1, n), generator=generator) for n in (5, 80, 33)]
    blocks = torch.randint(0, 96, (3, 6), generator=generator)
    expected = [one_token_logits(single, p, blocks[i:i + 1]) for i, p in enumerate(prompts)]
    rows.add_many(prompts)
    got = torch.cat([rows.extend(blocks[:, :4]), rows.extend(blocks[:, 4:])], 1)
    for i in range(3):
        assert torch.equal(got[i], expected[i][0]), i
