"""Self-speculation measurements (issue 11): kernels, acceptance against head subsets, step cost.

    python benchmarks/self_spec.py kernels                # one-row matmul ms: bf16/int8/int4
    python benchmarks/self_spec.py acceptance --target /path/or/registry-name
    python benchmarks/self_spec.py profile --target ...   # one drafting step, time split

`acceptance` is teacher-forced: the target generates greedily (plain), then every output
position is scored at once: the drafter (the target's trunk in int8 / int4, the prompt's KV in
full precision as when drafting) against the target's logits at that position. Greedy: how
often the drafter's argmax over its head's vocabulary equals the target's argmax; temperature
1: alpha = sum_x min(p(x), q(x)) with q renormalised over the subset. A subset = the N lowest
token ids (BPE merge order ~ corpus frequency) + special tokens [+ prompt and output so far].

The timed interleaved comparison is `specdec bench` (command in benchmarks/self_spec/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from specdec.bench.workloads import DEFAULT_QUESTIONS, load_questions
from specdec.decoding import SpeculativeDecoder
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.self_spec import special_token_ids
from specdec.prompts import user_prompt_ids
from specdec.runtime.low_bit_view import frequent_token_ids, shared_tree
from specdec.runtime.quantize import Int4Linear, Int8Linear, _LowBitLinear, fake_quantize
from specdec.sampling import SamplingParams

SUBSETS = (1024, 4096, 8192, 16384, 32768, 65536, None)  # None: the whole vocabulary


# --- kernels ------------------------------------------------------------------------------

def kernels(args: argparse.Namespace) -> None:
    """One-row (or --rows) matmul time per Qwen2.5-0.5B shape, interleaved, best of rounds."""
    shapes = {"q/o": (896, 896), "k/v": (128, 896), "gate/up": (4864, 896),
              "down": (896, 4864), "head": (151936, 896), "head 32k": (32768, 896)}
    print(f"rows={args.rows} threads={torch.get_num_threads()}")
    for label, (n, k) in shapes.items():
        linear = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        torch.nn.init.normal_(linear.weight, std=0.02)
        layers = {"bf16": linear, "int8": Int8Linear(linear),
                  "int4 g32": Int4Linear(linear, 32), "int4 g64": Int4Linear(linear, 64),
                  "int4 g128": Int4Linear(linear, 128)}
        x = torch.randn(args.rows, k, dtype=torch.bfloat16)
        best = dict.fromkeys(layers, float("inf"))
        reps = 3 if n > 10_000 else 30
        with torch.inference_mode():
            for _ in range(args.rounds):
                for name, layer in layers.items():
                    layer(x)
                    start = time.perf_counter()
                    for _ in range(reps):
                        layer(x)
                    best[name] = min(best[name], (time.perf_counter() - start) / reps * 1e3)
        print(f"{label:9s} {n:6d}x{k:<5d} " + "  ".join(f"{a} {b:7.3f}" for a, b in best.items()),
              flush=True)


# --- acceptance ---------------------------------------------------------------------------

class _PassThrough(torch.nn.Module):
    """Stands in for the output head: the runner's "logits" are then the final hidden states."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.weight = head.weight  # shared; read for its shape only

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def _simulated_trunk(target, bits: int, group: int):
    """The target's trunk with fake-quantized linears (the low-bit layers' exact weights, run
    as bf16 matmuls: the low-bit kernels are slow over many rows) and no head."""
    from specdec.runtime.wrap import wrap

    head = target.model.get_output_embeddings()

    def replace(path: str, child: torch.nn.Module):
        if child is head:
            return _PassThrough(head)
        if isinstance(child, torch.nn.Linear):
            layer = torch.nn.Linear(child.in_features, child.out_features,
                                    bias=child.bias is not None, device="meta")
            layer.weight = torch.nn.Parameter(fake_quantize(child.weight, bits, group),
                                              requires_grad=False)
            if child.bias is not None:
                layer.bias = child.bias
            return layer
        return None

    return wrap(shared_tree(target.model, replace), runtime="static")


def _hidden_states(trunk, target, prompt: list[int], output: list[int]) -> torch.Tensor:
    """Final hidden states at the positions predicting output[0..n-1], [n, H] (teacher-forced).

    The prompt's keys and values are the target's (as SelfDrafter.begin copies them), the
    output's come from the low-bit trunk (as accepted drafts do). Call after target.prefill.
    """
    if not trunk.prefill_from(target, torch.tensor([prompt])):
        raise RuntimeError("the trunk could not copy the target's prompt cache")
    return trunk.extend(torch.tensor([prompt[-1:] + output[:-1]]))[0]


def _scores(draft_logits: torch.Tensor, allowed: torch.Tensor, target_logits: torch.Tensor,
            ) -> tuple[float, float, float]:
    """(greedy agreement, alpha at temperature 1, coverage of the target's argmax)."""
    masked = draft_logits.masked_fill(~allowed, float("-inf"))
    target_top = target_logits.argmax(dim=-1)
    greedy = (masked.argmax(dim=-1) == target_top).float().mean()
    p, q = target_logits.softmax(dim=-1), masked.softmax(dim=-1)
    alpha = torch.minimum(p, q).sum(dim=-1).mean()
    coverage = allowed.gather(-1, target_top[:, None]).float().mean()
    return float(greedy), float(alpha), float(coverage)


def acceptance(args: argparse.Namespace) -> None:
    from specdec.models.loading import load_model

    target = load_model(args.target, dtype=args.dtype)
    questions = load_questions(args.questions, args.categories, args.per_category)
    specials = special_token_ids(target)
    vocab = target.vocab_size
    trunks = {bits: _simulated_trunk(target, bits, args.group) for bits in args.bits}
    head = target.model.get_output_embeddings()
    low_heads = {bits: fake_quantize(head.weight, bits, args.group) for bits in args.bits}
    rows: dict[str, list[tuple[float, float, float, int]]] = {}
    for number, question in enumerate(questions, 1):
        prompt = user_prompt_ids(target.tokenizer, question.text)
        params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens)
        started = time.perf_counter()
        # the target's greedy output (drafted by prompt lookup only to get it sooner)
        output = SpeculativeDecoder(target, NgramDrafter(), 4).generate(prompt, params).tokens
        with torch.inference_mode():
            target.prefill(torch.tensor([prompt]))
            hiddens = {bits: _hidden_states(trunk, target, prompt, output)
                       for bits, trunk in trunks.items()}
            target_logits = target.extend(torch.tensor([prompt[-1:] + output[:-1]]))[0]
            n = len(output)
            # context tokens known when drafting output[i]: the prompt and output[:i]
            first_seen = torch.full((vocab,), n, dtype=torch.long)
            for i, token in reversed(list(enumerate(output))):
                first_seen[token] = i + 1  # visible from position i + 1 on
            first_seen[torch.tensor(prompt)] = 0
            context = first_seen[None, :] <= torch.arange(n)[:, None]  # [n, V]
            for bits, hidden in hiddens.items():
                hidden = hidden.to(head.weight.dtype)
                low = torch.nn.functional.linear(hidden, low_heads[bits]).float()
                full = head(hidden).float()
                for size in SUBSETS:
                    fixed = torch.zeros(vocab, dtype=torch.bool)
                    fixed[frequent_token_ids(vocab, size or vocab, specials)] = True
                    for with_context in ((False, True) if size else (False,)):
                        allowed = fixed[None, :] | context if with_context else \
                            fixed[None, :].expand(n, -1)
                        # the subset's fixed rows are the low-bit head's; context rows full
                        logits = torch.where(fixed[None, :], low, full) if with_context else low
                        label = f"int{bits} vocab={size or 'all'}" + \
                            (" +context" if with_context else "")
                        rows.setdefault(label, []).append(
                            (*_scores(logits, allowed, target_logits), n))
        print(f"[{number}/{len(questions)}] {question.category} {question.question_id}: "
              f"{len(prompt)} prompt + {n} output tokens ({time.perf_counter() - started:.0f} s)",
              flush=True)
    # weighted by tokens: every output position counts once
    table = {label: [sum(v[i] * v[3] for v in values) / sum(v[3] for v in values)
                     for i in range(3)] for label, values in rows.items()}
    print(f"\n{len(questions)} prompts, up to {args.max_new_tokens} tokens each, teacher-forced, "
          "means over output positions\n"
          "| drafter head | greedy agreement | alpha (T=1) | target top-1 in subset |\n"
          "|---|---|---|---|")
    for label, (greedy, alpha, coverage) in table.items():
        print(f"| {label} | {greedy:.3f} | {alpha:.3f} | {coverage:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


# --- profile ------------------------------------------------------------------------------

class _Timer:
    """Inclusive time per module category via forward hooks (hook overhead ~µs per call)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._starts: dict[int, float] = {}

    def attach(self, module: torch.nn.Module, category: str) -> None:
        def pre(mod, _inputs):
            self._starts[id(mod)] = time.perf_counter()

        def post(mod, _inputs, _output):
            elapsed = time.perf_counter() - self._starts.pop(id(mod))
            self.totals[category] = self.totals.get(category, 0.0) + elapsed

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def wrap(self, function, category: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[category] = self.totals.get(category, 0.0) + \
                    time.perf_counter() - start

        return timed


def profile(args: argparse.Namespace) -> None:
    from specdec.models.loading import load_model

    target = load_model(args.target, dtype=args.dtype)
    question = load_questions(args.questions, None, 1)[0]
    prompt = user_prompt_ids(target.tokenizer, question.text)
    for spec in args.drafts:
        from specdec.drafters.factory import build_drafter

        drafter = build_drafter(spec, target, lambda _: None)
        model = drafter.model.model
        timer = _Timer()
        head = model.get_output_embeddings()
        timer.attach(head, "head")
        runner = drafter.model
        if hasattr(runner, "_attention"):  # the static runner does attention itself
            runner._attention = timer.wrap(runner._attention, "attention (incl. q/k/v/o)")
        else:
            for name, m in model.named_modules():
                if name.endswith("self_attn"):
                    timer.attach(m, "attention (incl. q/k/v/o)")
        for name, m in model.named_modules():
            if m is not head and isinstance(m, torch.nn.Linear | _LowBitLinear):
                group = "q/k/v/o" if ".self_attn." in name else "mlp"
                timer.attach(m, f"linear {group}")
        with torch.inference_mode():
            drafter.begin(torch.tensor([prompt]))
            context = torch.tensor([prompt + [prompt[-1]] * args.context])
            drafter.propose(context, 2, SamplingParams(temperature=0), None)  # warm-up
            timer.totals.clear()
            steps = 0
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                drafter.model.extend(context[:, -1:])
                drafter.model.rollback(1)
                steps += 1
            total = (time.perf_counter() - start) / steps * 1e3
        per = {k: v / steps * 1e3 for k, v in timer.totals.items()}
        linears = per.get("linear q/k/v/o", 0) + per.get("linear mlp", 0)
        attn_core = per.get("attention (incl. q/k/v/o)", 0) - per.get("linear q/k/v/o", 0)
        split = {"linear layers": linears, "head": per.get("head", 0.0),
                 "attention (without its linears)": attn_core}
        split["rest (norms, MLP act., embedding, Python)"] = total - sum(split.values())
        print(f"{spec}: {total:.1f} ms per one-token step at context "
              f"{len(prompt) + args.context} ({steps} steps) | " +
              " | ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in split.items()),
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--rows", type=int, default=1)
    k.add_argument("--rounds", type=int, default=7)
    for name in ("acceptance", "profile"):
        s = sub.add_parser(name)
        s.add_argument("--target", default="qwen2.5-coder-0.5b")
        s.add_argument("--dtype", default="bfloat16")
        s.add_argument("--questions", default=str(DEFAULT_QUESTIONS))
    a = sub.choices["acceptance"]
    a.add_argument("--per-category", type=int, default=1)
    a.add_argument("--categories", nargs="+", help="default: all")
    a.add_argument("--max-new-tokens", type=int, default=128)
    a.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    a.add_argument("--group", type=int, default=32)
    a.add_argument("--json")
    f = sub.choices["profile"]
    f.add_argument("--drafts", nargs="+", default=["self@int8", "self@int4",
                                                   "self@int4@vocab=32768"])
    f.add_argument("--context", type=int, default=64, help="tokens after the prompt")
    f.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"kernels": kernels, "acceptance": acceptance, "profile": profile}[args.command](args)


if __name__ == "__main__":
    main()
