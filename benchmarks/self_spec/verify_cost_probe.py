"""Verify cost vs block width, and a self@int4 drafting step, in bfloat16 and float32.

Question: does a float32 target verify k+1 tokens for about the cost of one (flat few-row
GEMM), so that self-speculation pays where bf16 (v = 2.2-2.7) does not?
"""
import statistics, sys, time, torch
from specdec.models.loading import load_model
from specdec.drafters.factory import build_drafter
from specdec.sampling import SamplingParams
from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.prompts import user_prompt_ids

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
reps = 7
question = load_questions(DEFAULT_QUESTIONS, per_category=1)[0]
for dtype in ("bfloat16", "float32"):
    target = load_model("qwen2.5-coder-0.5b", dtype=dtype, threads=threads)
    ids = torch.tensor([user_prompt_ids(target.tokenizer, question.text)])
    target.prefill(ids)
    feed = ids[:, -1:]
    row = {}
    for k in (1, 2, 3, 4, 5, 6, 7, 8):
        block = feed.repeat(1, k)
        times = []
        for _ in range(reps + 1):
            t = time.perf_counter(); target.extend(block); times.append(time.perf_counter() - t)
            target.rollback(k)
        row[k] = statistics.median(times[1:]) * 1000
    base = row[1]
    print(dtype, f"prompt {ids.shape[1]}", " ".join(f"k{k}={v:.1f}ms({v/base:.2f})" for k, v in row.items()), flush=True)
    for spec in ("self@int4", "self@int4@vocab=32768"):
        drafter = build_drafter(spec, target, None)
        drafter.begin(ids)
        gen = torch.Generator().manual_seed(0)
        times = []
        for _ in range(reps + 1):
            context = ids
            t = time.perf_counter()
            drafter.propose(context, 5, SamplingParams(temperature=0.0), gen)
            times.append((time.perf_counter() - t) / 5)
        step = statistics.median(times[1:]) * 1000
        print(f"  {spec}: draft step {step:.1f} ms = {step / base:.2f} of a 1-token target step", flush=True)
    del target
