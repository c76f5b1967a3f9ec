"""Per-position acceptance chance of a same-vocabulary model drafter under the two rules,
teacher-forced on sampled texts (no timing; issue 12).

    python benchmarks/coupled_acceptance.py [--draft qwen2.5-coder-0.5b@int8]
        [--per-category 1] [--max-new-tokens 64] [--noise 1000] [--tail 1e-3]

For every position t of a continuation sampled from the target (temperature T, plain
decoding): Algorithm 1 accepts a draft with chance beta_t = sum_x min(p_t(x), q_t(x)); the
coupled rule with chance P(argmax log q_t + G = argmax log p_t + G), estimated with --noise
independent Gumbel draws over the most likely tokens that leave at most --tail of p's plus
q's mass out (the tokens left out can change the estimate by at most that). Prints the means
and the bound (1 - TV) / (1 + TV).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.decoding import SpeculativeDecoder
from specdec.drafters.factory import build_drafter
from specdec.models.loading import load_model
from specdec.noise import gumbel_argmax, position_range
from specdec.prompts import user_prompt_ids
from specdec.sampling import SamplingParams, adjusted_probs


def distributions(model, ids: list[int], start: int, params: SamplingParams) -> torch.Tensor:
    """Adjusted next-token distributions at positions start..len(ids)-1, [n, V]."""
    with torch.inference_mode():
        model.prefill(torch.tensor([ids[:start]]))
        logits = model.extend(torch.tensor([ids[start - 1:-1]]))[0]
    return adjusted_probs(logits, params)


def coupled_match(p: torch.Tensor, q: torch.Tensor, draws: int, tail_limit: float,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: P(Gumbel-max of q == Gumbel-max of p) estimated over the most likely
    tokens (by max(p, q)) that leave at most tail_limit of p's plus q's mass out; and that
    tail mass (the most either argmax can fall outside, so the estimate's bias bound)."""
    at = position_range(0, draws)  # one independent noise per draw (keyed as positions)
    match, tails = torch.zeros(p.shape[0]), torch.zeros(p.shape[0])
    for i in range(p.shape[0]):
        order = torch.maximum(p[i], q[i]).argsort(descending=True)
        tail = (1 - p[i, order].double().cumsum(0)) + (1 - q[i, order].double().cumsum(0))
        keep = min(int((tail > tail_limit).sum()) + 1, len(order))
        ids = order[:keep]
        tails[i] = float(tail[keep - 1].clamp_min(0))
        y = gumbel_argmax(p[i, ids].expand(draws, -1), 1 + i, at, ids)
        x = gumbel_argmax(q[i, ids].expand(draws, -1), 1 + i, at, ids)
        match[i] = (x == y).double().mean()
    return match, tails


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b@int8")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--noise", type=int, default=1000)
    parser.add_argument("--tail", type=float, default=1e-3,
                        help="probability mass of p plus q left out of the Monte Carlo")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    target = load_model(args.target, dtype=args.dtype, threads=args.threads)
    drafter = build_drafter(args.draft, target, lambda spec: load_model(
        spec, dtype=args.dtype, threads=args.threads))
    draft_model = getattr(drafter, "model", None)
    if draft_model is None or type(drafter).__name__ != "ModelDrafter":
        parser.error(f"{args.draft} is not a same-vocabulary model drafter")
    params = SamplingParams(temperature=args.temperature, seed=0,
                            max_new_tokens=args.max_new_tokens)
    plain = SpeculativeDecoder(target, None, 0)
    betas, matches, tails = [], [], []
    for n, question in enumerate(load_questions(args.questions,
                                                per_category=args.per_category)):
        prompt = user_prompt_ids(target.tokenizer, question.text)
        text = plain.generate(prompt, SamplingParams(**{**params.__dict__, "seed": n})).tokens
        ids = prompt + text
        p = distributions(target, ids, len(prompt), params)
        q = distributions(draft_model, ids, len(prompt), params)
        beta = torch.minimum(p, q).sum(-1)
        match, tail = coupled_match(p, q, args.noise, args.tail)
        betas.append(beta)
        matches.append(match)
        tails.append(tail)
        print(f"{question.category:>15} {len(text):3d} positions: rejection {beta.mean():.3f}"
              f"  coupled {match.mean():.3f}  (tail <= {tail.max():.1e})", file=sys.stderr)
    beta, match, tail = torch.cat(betas), torch.cat(matches), torch.cat(tails)
    tv = 1 - beta
    print(f"{len(beta)} positions, {args.draft} drafting for {args.target} ({args.dtype}, "
          f"T={args.temperature:g}): acceptance chance per draft, rejection rule (1 - TV) "
          f"{beta.mean():.3f}, coupled rule {match.mean():.3f} (+- "
          f"{(match.std() / len(match) ** 0.5):.3f} over positions; bound (1-TV)/(1+TV) "
          f"{((1 - tv) / (1 + tv)).mean():.3f}; {args.noise} noise draws per position, "
          f"tail mass left out <= {tail.max():.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
