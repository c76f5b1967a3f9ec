"""GPU check in one command: the `gpu` tests, then the GPU measurements, in one report.

    python benchmarks/runner_gpu.py --all                  # ~5 min: gpu tests + 0.5b shape
    python benchmarks/runner_gpu.py --all --shapes 0.5b,1.5b,7b --widths 1,2,4,8,16 \
        --budget-s 1200                                    # the issue's full table (longer)
    python benchmarks/runner_gpu.py --device cpu --shapes tiny --no-compile --no-hf-static \
        --new-tokens 8                                     # smoke test of the script (no GPU)

Random weights at real shapes (no download). Per shape: plain tok/s of our compiled static
runner against transformers' eager and static-cache `generate`; v(k) = t(k-token verify) /
t(1-token step) for k = 1..max width (k padded up to a compiled width); n-gram speculation on
a repetitive prompt; the target drafting for itself (alpha = 1), measured / predicted S;
batched throughput (plain greedy, `generate_batch`) at 1 / 8 / 32 rows; the graphs dynamo
holds per width after all of it (1 each: nothing recompiled). Then the issue's goals, each
met / missed / not measured. Phases run in order while --budget-s lasts; one that would start
past it is recorded as skipped, never estimated. Timed with CUDA synchronization.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from specdec import SamplingParams, SpeculativeDecoder
from specdec.drafters.ngram import NgramDrafter
from specdec.models import wrap
from specdec.runtime.device import resolve_device, synchronize
from specdec.theory import speedup

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (64, 128, 2, 4, 2, 1000),
    "0.5b": (896, 4864, 24, 14, 2, 151936),
    "1.5b": (1536, 8960, 28, 12, 2, 151936),
    "7b": (3584, 18944, 28, 28, 4, 152064),
}
GPU_TESTS = ["tests/test_gpu.py", "tests/test_noise.py"]  # the `gpu`-marked ones: -m gpu
BATCH_ROWS = (1, 8, 32)
# peak memory bandwidth (GB/s) by device name, for the roofline goal; --bandwidth-gbs overrides
BANDWIDTH = {"H200": 4800, "H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350,
             "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864,
             "A10G": 600, "A10": 600, "L4": 300, "RTX 4090": 1008}


class Budget:
    """Phases start only while time is left; skipped ones are recorded as such."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def run(self, out: dict, key: str, phase) -> None:
        if time.monotonic() >= self.deadline:
            out[key] = "skipped: --budget-s spent"
            return
        try:
            out[key] = phase()
        except Exception as error:  # noqa: BLE001 - one failed phase must not lose the rest
            out[key] = f"failed: {type(error).__name__}: {error}"


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


def measure(shape: str, device: torch.device, args: argparse.Namespace,
            budget: Budget) -> dict:
    model = build(shape, device)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, 128), generator=torch.Generator().manual_seed(0))
    ids = prompt[0].tolist()
    out: dict = {"shape": shape, "weight_bytes": sum(p.numel() * p.element_size()
                                                     for p in model.parameters())}
    runner = wrap(model, compile=args.compile, widths=args.widths)
    # capacity for a 128-token prompt and its default reserve: later prefills fit, but the
    # batched and self-draft phases regrow nothing either way (regrowth recompiles nothing)
    out["compile_s"] = timed(device, lambda: runner.warmup(1024)) if args.compile else 0.0
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
    plain = SpeculativeDecoder(runner, None, 0)

    def plain_tok_s() -> float:
        plain.generate(ids, params)  # warm-up
        return args.new_tokens / timed(device, lambda: plain.generate(ids, params))

    budget.run(out, "ours_plain_tok_s", plain_tok_s)
    budget.run(out, "v", lambda: verify_costs(runner, prompt, device, max(args.widths)))
    budget.run(out, "ngram", lambda: ngram(runner, ids, params))
    budget.run(out, "self_draft", lambda: self_draft(runner, model, ids, params, out, args))
    budget.run(out, "batched_tok_s", lambda: batched(runner, vocab, device, args))
    if args.compile:
        out["graphs_per_width"] = runner.compiled_graphs()  # 1 each: nothing recompiled
        out["compiled_steps"] = runner.compiled_steps
    hf = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    phases = [("transformers_eager_tok_s", {})]
    if args.hf_static:
        phases.append(("transformers_static_tok_s", {"cache_implementation": "static"}))
    for label, extra in phases:
        budget.run(out, label, lambda e=extra: hf_tok_s(model, prompt.to(device), hf, e, device,
                                                        args.new_tokens))
    return out


def hf_tok_s(model, ids: torch.Tensor, kwargs: dict, extra: dict, device: torch.device,
             new_tokens: int) -> float:
    with torch.inference_mode():
        model.generate(ids, **kwargs, **extra)  # warm-up (compiles the static one)
        return new_tokens / timed(device, lambda: model.generate(ids, **kwargs, **extra))


def verify_costs(runner, prompt: torch.Tensor, device: torch.device, widest: int,
                 repeats: int = 20) -> dict:
    """v(k) = time of one k-token extend / time of one 1-token extend, 128-token context."""
    costs = {}
    for k in range(1, widest + 1):
        runner.prefill(prompt)
        tokens = prompt[:, -k:]

        def step(t=tokens):
            for _ in range(repeats):
                runner.extend(t)
                runner.rollback(t.shape[1])

        step()
        costs[k] = timed(device, step) / repeats
    return {str(k): costs[k] / costs[1] for k in costs}


def ngram(runner, ids: list[int], params: SamplingParams) -> dict:
    repetitive = ids[:16] * 8
    decoder = SpeculativeDecoder(runner, NgramDrafter(), 8)
    decoder.generate(repetitive, params)
    stats = decoder.generate(repetitive, params).stats
    return {"tok_s": stats.generated / stats.total_s, "acceptance": stats.acceptance_rate}


def self_draft(runner, model, ids: list[int], params: SamplingParams, out: dict,
               args: argparse.Namespace) -> dict:
    plain = out.get("ours_plain_tok_s")
    if not isinstance(plain, float):
        return {"skipped": "no plain tok/s to compare with"}
    # same weights, its own cache: alpha = 1 (shares the target's width-1 graph)
    drafter = wrap(model, compile=args.compile, widths=(1,))
    gamma = 4
    decoder = SpeculativeDecoder(runner, drafter, gamma)
    decoder.generate(ids, params)
    stats = decoder.generate(ids, params).stats
    t1 = 1.0 / plain
    c = stats.drafter_s / max(stats.drafter_calls, 1) / t1
    v = out["v"].get(str(gamma + 1), 1.0) if isinstance(out.get("v"), dict) else 1.0
    predicted = speedup(min(stats.alpha, 1 - 1e-9), gamma, c, v)  # alpha = 1: E = gamma + 1
    measured = (stats.generated / stats.total_s) / plain
    return {"gamma": gamma, "alpha": stats.alpha, "c": c, "v": v, "predicted_S": predicted,
            "measured_S": measured, "measured_over_predicted": measured / predicted}


def batched(runner, vocab: int, device: torch.device, args: argparse.Namespace) -> dict:
    """Total tok/s of plain greedy decoding of `rows` prompts in one batch (eager rows)."""
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
    decoder = SpeculativeDecoder(runner, None, 0)
    generator = torch.Generator().manual_seed(1)
    rates = {}
    for rows in BATCH_ROWS:
        prompts = [torch.randint(0, vocab, (64,), generator=generator).tolist()
                   for _ in range(rows)]
        decoder.generate_batch(prompts[:1], params, max_batch_size=1)  # warm-up
        seconds = timed(device, lambda p=prompts, r=rows: decoder.generate_batch(
            p, params, max_batch_size=r))
        rates[str(rows)] = rows * args.new_tokens / seconds
    return rates


def run_gpu_tests(seconds: float) -> dict:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               *GPU_TESTS]
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stdout or b"")[-3000:]
        return {"command": " ".join(command), "passed": False,
                "summary": f"timed out after {seconds:.0f}s",
                "tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    lines = done.stdout.strip().splitlines()
    return {"command": " ".join(command), "passed": done.returncode == 0,
            "summary": lines[-1] if lines else "", "seconds": time.monotonic() - start,
            "tail": done.stdout[-3000:] if done.returncode else ""}


def goals(results: dict, bandwidth: float | None) -> list[dict]:
    """The issue's goals: met / missed from measured numbers, else 'not measured'."""
    by_shape = {s["shape"]: s for s in results["shapes"]}
    rows = []

    def goal(name: str, value, target: str, ok) -> None:
        measured = isinstance(value, float)
        rows.append({"goal": name, "measured": value if measured else "not measured",
                     "target": target, "met": bool(ok(value)) if measured else None})

    for shape, s in by_shape.items():
        plain, static = s.get("ours_plain_tok_s"), s.get("transformers_static_tok_s")
        ratio = plain / static if isinstance(plain, float) and isinstance(static, float) \
            else None
        goal(f"{shape}: plain / transformers static generate", ratio, ">= 1.2",
             lambda x: x >= 1.2)
        v = s.get("v")
        goal(f"{shape}: v(8)", v.get("8") if isinstance(v, dict) else None, "<= 1.15",
             lambda x: x <= 1.15)
        draft = s.get("self_draft")
        goal(f"{shape}: self-draft measured / predicted S",
             draft.get("measured_over_predicted") if isinstance(draft, dict) else None,
             ">= 0.9", lambda x: x >= 0.9)
        rates = s.get("batched_tok_s")
        scale = rates["32"] / rates["1"] if isinstance(rates, dict) else None
        goal(f"{shape}: 32-row / 1-row server throughput", scale, ">= 10", lambda x: x >= 10)
        if shape == "7b":
            roof = bandwidth * 1e9 / s["weight_bytes"] if bandwidth else None
            share = plain / roof if isinstance(plain, float) and roof else None
            goal("7b: plain / bandwidth roofline", share, ">= 0.8", lambda x: x >= 0.8)
    return rows


def device_bandwidth(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((gbs for key, gbs in BANDWIDTH.items() if key in name), None)


def report_markdown(results: dict) -> str:
    lines = [f"# GPU check: {results['device']}", "", f"torch {results['torch']}; "
             f"`{results['command']}`; {results['seconds']:.0f} s", ""]
    tests = results.get("gpu_tests")
    if isinstance(tests, dict):
        lines += [f"gpu tests: {'passed' if tests['passed'] else 'FAILED'} "
                  f"({tests['summary']})", ""]
    lines += ["| goal | measured | target | met |", "|---|---|---|---|"]
    for g in results["goals"]:
        value = g["measured"]
        shown = f"{value:.3g}" if isinstance(value, float) else value
        met = {True: "yes", False: "no", None: "-"}[g["met"]]
        lines.append(f"| {g['goal']} | {shown} | {g['target']} | {met} |")
    lines += ["", "Per shape (raw): see results.json."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="the gpu tests, then the measurements")
    p.add_argument("--no-tests", dest="tests", action="store_false",
                   help="with --all: skip the gpu tests")
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", default="0.5b")
    p.add_argument("--widths", default="1,4,8",
                   type=lambda s: tuple(int(w) for w in s.split(",")),
                   help="compiled widths (default 1,4,8: three compiles per shape)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--budget-s", type=float, default=300,
                   help="no phase starts after this many seconds (default 300)")
    p.add_argument("--tests-timeout-s", type=float, default=150)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-hf-static", dest="hf_static", action="store_false",
                   help="skip transformers' static-cache generate (it compiles)")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="peak memory bandwidth for the 7b roofline (default: by device name)")
    p.add_argument("--out", default="benchmarks/runner_gpu")
    args = p.parse_args()
    started = time.monotonic()
    budget = Budget(args.budget_s)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict = {"device": name, "torch": torch.__version__, "command": " ".join(sys.argv),
                     "shapes": []}
    if args.all and args.tests:
        results["gpu_tests"] = run_gpu_tests(args.tests_timeout_s)
        print(json.dumps(results["gpu_tests"]), file=sys.stderr)
    for shape in args.shapes.split(","):
        results["shapes"].append(measure(shape, device, args, budget))
        print(json.dumps(results["shapes"][-1]), file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["goals"] = goals(results, device_bandwidth(name, args.bandwidth_gbs))
    results["seconds"] = time.monotonic() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report_markdown(results))
    print(report_markdown(results))
    return 0 if results.get("gpu_tests", {}).get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
