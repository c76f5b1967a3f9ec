"""Batched drafting benchmark: a model drafter drafting every row in one forward per draft
position (Drafter.batched, drafters/model_rows.py) against the same drafter drafting row by
row (B x gamma one-row forwards), by batch size; aggregate tokens/s of generate_batch, same
prompts and fixed gamma, interleaved repeats. Greedy outputs of the two must be equal (checked).

    python benchmarks/batch_drafting.py --target qwen2.5-coder-0.5b --threads 2 \\
        --out benchmarks/batch_drafting

The drafter defaults to a second copy of the target (alpha = 1: the run measures costs, not
acceptance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from batch import TASKS, throughput  # run from benchmarks/ or the repository root

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.model import ModelDrafter
from specdec.models import load_model
from specdec.prompts import user_prompt_ids


class RowByRow(ModelDrafter):
    """The same drafter without batched drafting: forks draft one row at a time."""

    def batched(self, max_rows: int) -> None:
        return None

    def fork(self) -> RowByRow:
        return RowByRow(self.model.fork(), self.vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")
    parser.add_argument("--drafter", default=None, help="default: a copy of the target")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/batch_drafting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = load_model(args.target, args.dtype, device=args.device)
    draft_model = load_model(args.drafter or args.target, args.dtype, device=args.device)
    decoders = {
        "batched": SpeculativeDecoder(target, ModelDrafter(draft_model, target.vocab_size),
                                      args.gamma),
        "row by row": SpeculativeDecoder(target, RowByRow(draft_model, target.vocab_size),
                                         args.gamma),
    }
    prompts = [user_prompt_ids(target, TASKS[i % len(TASKS)]) for i in range(args.prompts)]
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    batches = [int(b) for b in args.batches.split(",")]
    runs: list[dict] = []
    with torch.inference_mode():
        for repeat in range(args.repeats):
            for batch in batches:
                tokens = {}
                for method, decoder in decoders.items():
                    result = throughput(decoder, prompts, params, batch)
                    tokens[method] = decoder.generate_batch(prompts[:2], params, batch)
                    runs.append({"repeat": repeat, "batch": batch, "method": method, **result})
                    print(json.dumps(runs[-1]), flush=True)
                same = [r.tokens for r in tokens["batched"]] == \
                    [r.tokens for r in tokens["row by row"]]
                runs[-1]["same_tokens"] = same
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    lines = ["| rows | batched tok/s | row by row tok/s | speed-up |", "|---|---|---|---|"]
    for batch in batches:
        best = {m: max(r["tokens_per_s"] for r in runs
                       if r["batch"] == batch and r["method"] == m) for m in decoders}
        lines.append(f"| {batch} | {best['batched']:.1f} | {best['row by row']:.1f} | "
                     f"{best['batched'] / best['row by row']:.2f}x |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
