"""Runner benchmark on a CUDA GPU: random weights at real shapes (no download needed).

Per shape (Qwen2.5-0.5B, Qwen2.5-7B): plain tok/s of our compiled static runner against
transformers' eager `generate` and its static-cache `generate`; v(k) = t(k-token verify) /
t(1-token step) at the compiled widths; n-gram speculation on a repetitive prompt; the target
drafting for itself (alpha = 1) with measured / predicted S. Timed with CUDA synchronization.

    python benchmarks/runner_gpu.py --shapes 0.5b,7b --out benchmarks/runner_gpu
    python benchmarks/runner_gpu.py --device cpu --shapes tiny   # smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.ngram import NgramDrafter
from specdec.models import wrap
from specdec.models.device import resolve_device, synchronize
from specdec.theory import speedup

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (64, 128, 2, 4, 2, 1000),
    "0.5b": (896, 4864, 24, 14, 2, 151936),
    "1.5b": (1536, 8960, 28, 12, 2, 151936),
    "7b": (3584, 18944, 28, 28, 4, 152064),
}
WIDTHS = (1, 2, 4, 8, 16)


def build(shape: str, device: torch.device) -> Qwen2ForCausalLM:
    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    config = Qwen2Config(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=4096, tie_word_embeddings=shape != "7b")
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    return model


def timed(device: torch.device, function) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def measure(shape: str, device: torch.device, new_tokens: int) -> dict:
    model = build(shape, device)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, 128), generator=torch.Generator().manual_seed(0))
    out: dict = {"shape": shape}
    runner = wrap(model, compile=True, widths=WIDTHS)
    out["compile_s"] = timed(device, lambda: runner.warmup(1024))
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    plain = SpeculativeDecoder(runner, None, 0)
    plain.generate(prompt[0].tolist(), params)  # warm-up
    seconds = timed(device, lambda: plain.generate(prompt[0].tolist(), params))
    out["ours_plain_tok_s"] = new_tokens / seconds

    ids = prompt.to(device)
    hf_kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    for label, extra in (("transformers_eager_tok_s", {}),
                         ("transformers_static_tok_s", {"cache_implementation": "static"})):
        with torch.inference_mode():
            model.generate(ids, **hf_kwargs, **extra)  # warm-up (compiles the static one)
            seconds = timed(device, lambda e=extra: model.generate(ids, **hf_kwargs, **e))
        out[label] = new_tokens / seconds

    out["v"] = verify_costs(runner, prompt, device)
    repetitive = (prompt[0, :16].tolist()) * 8
    ngram = SpeculativeDecoder(runner, NgramDrafter(), 8)
    ngram.generate(repetitive, params)
    result = ngram.generate(repetitive, params)
    out["ngram_tok_s"] = new_tokens / result.stats.total_s
    out["ngram_acceptance"] = result.stats.acceptance_rate

    drafter = wrap(model, compile=True, widths=(1,))  # same weights, its own cache: alpha = 1
    gamma = 4
    self_spec = SpeculativeDecoder(runner, drafter, gamma)
    self_spec.generate(prompt[0].tolist(), params)
    result = self_spec.generate(prompt[0].tolist(), params)
    stats = result.stats
    t1 = 1.0 / out["ours_plain_tok_s"]
    c = stats.drafter_s / max(stats.drafter_calls, 1) / t1
    v = out["v"].get(str(gamma + 1 if gamma + 1 in WIDTHS else 8), 1.0)
    predicted = speedup(min(stats.alpha, 1 - 1e-9), gamma, c, v)  # alpha = 1: E = gamma + 1
    measured = (new_tokens / stats.total_s) / out["ours_plain_tok_s"]
    out["self_draft"] = {"gamma": gamma, "alpha": stats.alpha, "c": c, "v": v,
                         "predicted_S": predicted, "measured_S": measured,
                         "measured_over_predicted": measured / predicted}
    return out


def verify_costs(runner, prompt: torch.Tensor, device: torch.device, repeats: int = 20) -> dict:
    """v(k) = time of one k-token extend / time of one 1-token extend, at a 128-token context."""
    costs = {}
    for width in WIDTHS:
        runner.prefill(prompt)
        tokens = prompt[:, -width:]

        def step(t=tokens):
            for _ in range(repeats):
                runner.extend(t)
                runner.rollback(t.shape[1])

        step()
        costs[width] = timed(device, step) / repeats
    return {str(k): costs[k] / costs[1] for k in WIDTHS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", default="0.5b,7b")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", default="benchmarks/runner_gpu")
    args = p.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "command": " ".join(sys.argv),
               "shapes": []}
    for shape in args.shapes.split(","):
        results["shapes"].append(measure(shape, device, args.new_tokens))
        print(json.dumps(results["shapes"][-1]), file=sys.stderr)
        torch.cuda.empty_cache() if device.type == "cuda" else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
