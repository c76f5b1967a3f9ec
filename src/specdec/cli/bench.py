"""`specdec bench`: Spec-Bench questions through every method in one interleaved run."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from specdec.bench.workloads import CATEGORIES, questions_path
from specdec.cli.options import DTYPE_CHOICES, DTYPE_HELP, add_runtime_arguments, runtime_options
from specdec.errors import UsageError
from specdec.machine import contention_warning
from specdec.models.registry import DEFAULT_TARGET

DEFAULT_DRAFTS = "ngram,smollm2-135m,ngram+smollm2-135m"
# --quick: a smoke run that the code works end to end, not a measurement (too few questions
# for the goals to be judged): 2 questions, greedy, 32 tokens, 4 methods, 12 generations with
# the warm-ups. Options given explicitly still win.
QUICK = {"drafts": "ngram", "categories": "qa,summarization", "per_category": 1,
         "max_new_tokens": 32, "gammas": "auto", "temperatures": "0", "no_llamacpp": True}
QUICK_COST = ("2.4 min of CPU once the model is converted: 4.4 min measured here with "
              "--threads 1 while the load average was 5-6 on 2 cores")
DEFAULTS = {"drafts": DEFAULT_DRAFTS, "per_category": 8,
            "max_new_tokens": 128, "gammas": "4,auto", "temperatures": "0,1",
            "no_llamacpp": False}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specdec bench", description=__doc__)
    p.add_argument("--target", default=DEFAULT_TARGET, help="registry name, directory or .gguf")
    p.add_argument("--drafts", help="comma-separated drafter specs, each optionally with its "
                   f"own gammas as SPEC@G1/G2 (default {DEFAULT_DRAFTS})")
    p.add_argument("--gammas", help="comma-separated gammas per drafter, integers or 'auto' "
                                    "(default 4,auto)")
    p.add_argument("--categories",
                   help=f"comma-separated, e.g. of Spec-Bench's {', '.join(CATEGORIES)} (default: "
                        "all of the question file)")
    p.add_argument("--per-category", type=int, help="questions per category (default 8)")
    p.add_argument("--max-new-tokens", type=int, help="per generation (default 128)")
    p.add_argument("--temperatures", help="comma-separated (default 0,1)")
    p.add_argument("--repeats", type=int, default=1, help="repeat the whole run (spread)")
    p.add_argument("--questions", default="spec-bench",
                   help="a shipped workload, spec-bench (the 240 Spec-Bench dev questions) or "
                        "editing (20 code and document edits), or a Spec-Bench-style jsonl file "
                        "(default spec-bench)")
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="specdec's target, " + DTYPE_HELP)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-baselines", action="store_true", help="skip transformers' generate")
    p.add_argument("--no-llamacpp", action="store_true", default=None, help="skip llama.cpp")
    p.add_argument("--llamacpp-plain-buffers", action="store_true",
                   help="llama.cpp without its repacked weight buffers: only where its default "
                        "fails on this machine (the report says so)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new question after this many minutes (categories alternate, "
                        "so all are cut alike)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (does it work?), not a measurement: 2 questions, greedy, "
                        f"32 tokens, ngram with gamma auto against the baselines; {QUICK_COST}")
    add_runtime_arguments(p)
    return p


def main(argv: list[str]) -> int:
    from specdec.bench.suite import BenchConfig, run_benchmark

    args = parser().parse_args(argv)
    runtime = runtime_options(args)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    config = BenchConfig(
        target=args.target, questions=args.questions, out=args.out,
        drafts=_list(args.drafts, "--drafts"), gammas=[_gamma(g) for g in _list(args.gammas,
                                                                                "--gammas")],
        categories=None if args.categories is None else _list(args.categories, "--categories"),
        per_category=_bounded(args.per_category, "--per-category", 1, 1000),
        max_new_tokens=_bounded(args.max_new_tokens, "--max-new-tokens", 1, 8192),
        temperatures=[_temperature(t) for t in _list(args.temperatures, "--temperatures")],
        repeats=_bounded(args.repeats, "--repeats", 1, 100), dtype=args.dtype,
        threads=_bounded(args.threads, "--threads", 1, 512), baselines=not args.no_baselines,
        llamacpp=not args.no_llamacpp, llamacpp_plain_buffers=args.llamacpp_plain_buffers,
        command="specdec bench " + shlex.join(argv),
        max_minutes=None if args.max_minutes is None else
        float(_bounded(args.max_minutes, "--max-minutes", 0, 10080)))
    _check_drafts(config)
    questions_path(config.questions)  # a missing file fails before any model loads
    torch.set_num_threads(config.threads)
    warning = contention_warning(config.threads) if runtime.device.type == "cpu" else None
    if warning:
        print(f"specdec: {warning}", file=sys.stderr)
    models: dict[tuple[str, bool], object] = {}

    def loader(spec: str, pack: bool = True):
        from specdec.models.loading import load_model

        if (spec, pack) not in models:  # one copy per model, shared by every method using it
            dtype = None if config.dtype == "auto" else config.dtype
            models[spec, pack] = load_model(spec, dtype=dtype, threads=config.threads,
                                            pack=pack, **runtime.load_kwargs())
        return models[spec, pack]

    outputs = run_benchmark(config, loader(config.target), loader,
                            _gguf(config.target) if config.llamacpp else None)
    print(outputs["report"].read_text())
    print(f"wrote {', '.join(str(p) for p in outputs.values())}", file=sys.stderr)
    return 0


def _check_drafts(config) -> None:
    """Every --drafts entry checked before the target loads (errors name --drafts)."""
    from specdec.bench.suite import split_draft
    from specdec.drafters.factory import validate_spec

    for entry in config.drafts:
        spec, _ = split_draft(entry, config.gammas)
        validate_spec(spec, "--drafts")


def _list(text: str, flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UsageError(f"{flag} is empty")
    return items


def _bounded(value: int, flag: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise UsageError(f"{flag} must be in [{low}, {high}], got {value}")
    return value


def _gamma(text: str) -> int | str:
    from specdec.drafters.factory import build_gamma

    build_gamma(text)  # validates: an integer in range or 'auto'
    return "auto" if text.lower() == "auto" else int(text)


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise UsageError(f"--temperatures: each must be a number in [0, 100], got {text!r}")
    return value


def _gguf(target: str) -> Path | None:
    """The GGUF file behind the target, for llama.cpp (None for a transformers directory)."""
    if target.endswith(".gguf") and Path(target).is_file():
        return Path(target)
    from specdec.errors import ModelLoadError
    from specdec.models import fetch, registry

    try:
        registry.get_entry(target)
    except ModelLoadError:  # not a registry name
        return None
    return fetch.ensure_model(target)
