"""What one numerics for every block width buys, checked the same way for every runner:
speculative greedy output equals plain greedy output, and a seed gives one text whatever the
drafter, γ or batch slot."""

from __future__ import annotations

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.factory import build_drafter
from specdec.drafters.model import ModelDrafter

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
