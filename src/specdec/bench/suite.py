"""Build the compared methods for a target and run the whole benchmark (library entry point)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from specdec.bench import llamacpp
from specdec.bench.methods import PLAIN, Method, hf_methods, specdec_method
from specdec.bench.metrics import summarize
from specdec.bench.report import write_outputs
from specdec.bench.roofline import linear_lines, measure_roofline
from specdec.bench.runner import Prompt, RunConfig, run
from specdec.bench.workloads import Question, load_questions
from specdec.drafters.factory import build_drafter, build_gamma, parse_draft, split_gammas
from specdec.errors import UsageError
from specdec.language_model import LanguageModel
from specdec.machine import OtherJobsMeter, cpu_count, load_average
from specdec.prompts import user_prompt_ids

Loader = Callable[..., LanguageModel]  # (spec, pack=True): one copy per (spec, pack)


@dataclass
class BenchConfig:
    target: str
    questions: str
    out: str
    drafts: list[str] = field(default_factory=lambda: ["ngram"])  # SPEC or SPEC@G1/G2
    gammas: list[int | str] = field(default_factory=lambda: [4, "auto"])
    categories: list[str] | None = None  # None: every category of the question file
    per_category: int = 8
    max_new_tokens: int = 128
    temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    repeats: int = 1
    dtype: str = "bfloat16"
    threads: int = 2
    baselines: bool = True  # transformers' generate methods
    llamacpp: bool = True  # when installed and the target is a GGUF
    llamacpp_plain_buffers: bool = False  # only where llama.cpp's default buffers fail
    lookup_tokens: int = 10  # prompt lookup draft length of the transformers / llama.cpp methods
    progress: bool = True
    roofline: bool = True  # measure bandwidth and the target's step per width before the run
    max_minutes: float | None = None  # start no new question after this long
    command: str = ""


def split_draft(entry: str, default: list[int | str]) -> tuple[str, list[int | str]]:
    """'SPEC@G1/G2/...' -> (SPEC, [G1, G2, ...]); a plain SPEC takes the default gammas."""
    spec, gammas = split_gammas(entry)
    parse_draft(spec)  # validates before any model is loaded
    return spec, list(default) if gammas is None else gammas


def drafter_models(drafts: list[str]) -> list[str]:
    """The models to load among draft specs ('smollm2-135m@int8', 'ngram+X' -> X), once each.

    Options (@int8) are dropped: transformers' assisted generation runs the model as loaded.
    """
    models = []
    for entry in drafts:
        model = parse_draft(split_gammas(entry)[0]).model
        if model is not None and model not in models:
            models.append(model)
    return models


def build_methods(config: BenchConfig, target: LanguageModel, loader: Loader,
                  gguf: str | Path | None) -> tuple[list[Method], list[str]]:
    """All methods of the run, the plain baseline first; plus notes on what was left out."""
    notes: list[str] = []
    methods = [specdec_method(target, None, 0, PLAIN)]
    hf_model = getattr(target, "model", None)
    if config.baselines and hf_model is not None and not hf_model.config.is_encoder_decoder:
        # transformers runs its own copies with plain nn.Linear layers, as its users run it
        # (our packed layers would be used, and q/k/v computed three times, through slices)
        hf_model = loader(config.target, pack=False).model
        assistants = {}
        for spec in drafter_models(config.drafts):
            model = loader(spec, pack=False)
            assistants[spec] = (model.model, model.tokenizer)
        methods += hf_methods(hf_model, _eos_ids(target), assistants, target.tokenizer,
                              config.lookup_tokens)
    for entry in config.drafts:
        spec, gammas = split_draft(entry, config.gammas)
        for gamma in gammas:
            drafter = build_drafter(spec, target, loader)
            methods.append(specdec_method(target, drafter, build_gamma(gamma),
                                          f"specdec {spec} g={gamma}", spec, gamma))
    if config.llamacpp:
        if not llamacpp.available():
            notes.append("llama.cpp left out: llama-cpp-python is not installed "
                         "(pip install -e '.[llamacpp]', builds from source)")
        elif gguf is None:
            notes.append("llama.cpp left out: the target is not a GGUF file")
        else:
            methods += llamacpp.llamacpp_methods(gguf, config.threads,
                                                 lookup_tokens=config.lookup_tokens,
                                                 plain_buffers=config.llamacpp_plain_buffers)
            if config.llamacpp_plain_buffers:
                notes.append("llama.cpp ran without its extra buffer types (repacked weights)"
                             " at the user's request (--llamacpp-plain-buffers): slower than "
                             "its default")
    return methods, notes


def bench_prompts(tokenizer: Any, questions: list[Question]) -> list[Prompt]:
    """Each question as one user message, through the chat template (prompts.py)."""
    return [Prompt(q, user_prompt_ids(tokenizer, q.text)) for q in questions]


def run_benchmark(config: BenchConfig, target: LanguageModel, loader: Loader,
                  gguf: str | Path | None = None) -> dict[str, Path]:
    """Run every method on the configured questions; write results.json, report.md, plots."""
    if target.tokenizer is None:
        raise UsageError("the benchmark needs a target with a tokenizer (for the questions)")
    questions = load_questions(config.questions, config.categories, config.per_category)
    # the report names the categories that ran (None asked for all of the file's)
    config = replace(config, categories=list(dict.fromkeys(q.category for q in questions)))
    prompts = bench_prompts(target.tokenizer, questions)
    methods, notes = build_methods(config, target, loader, gguf)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "records.jsonl"
    journal.unlink(missing_ok=True)
    run_config = RunConfig(tuple(config.temperatures), config.max_new_tokens, config.repeats,
                           progress=config.progress, journal=journal,
                           max_seconds=None if config.max_minutes is None
                           else 60 * config.max_minutes)
    environment = _environment()
    if config.roofline and isinstance(getattr(target, "model", None), torch.nn.Module):
        # before the run, on the same idle machine: how far the step is from its limit
        roofline = measure_roofline(target, repeats=5)
        environment["roofline"] = roofline.as_dict()
        environment["packing"] = linear_lines(target)
    load_before, others = load_average(), OtherJobsMeter()
    start = time.perf_counter()
    records = run(methods, prompts, run_config)
    seconds = time.perf_counter() - start
    load = machine_load(load_before, load_average(), config.threads,
                        other_cores=others.other_cores())
    if load["warning"]:
        notes.append(load["warning"])
    done = {(r.question_id, r.repeat) for r in records}
    if len(done) < len(prompts) * config.repeats:
        notes.append(f"time limit of {config.max_minutes:g} min reached: {len(done)} of "
                     f"{len(prompts) * config.repeats} question runs done")
    categories = sorted({r.category for r in records})
    dtype = getattr(getattr(target, "model", None), "dtype", config.dtype)
    notes += _fixed_notes(config, str(dtype).removeprefix("torch."), _runner_note(target))
    meta = {"command": config.command, "config": _config_dict(config),
            "environment": {**environment, "load": load}, "seconds": seconds,
            "notes": notes,
            "sample": f"{len(done)} question runs ({', '.join(categories)}; up to "
                      f"{config.per_category} per category) x "
                      f"{len(config.temperatures)} temperatures x "
                      f"{len(methods)} methods, up to {config.max_new_tokens} new tokens"}
    return write_outputs(out, meta, methods, summarize(records, methods), records)


# other processes may hold this many cores on average before a run counts as busy
OTHER_CORES_LIMIT = 0.2


def machine_load(before: tuple[float, ...] | None, after: tuple[float, ...] | None,
                 threads: int, cores: int | None = None,
                 other_cores: float | None = None) -> dict[str, Any]:
    """Load averages around the run, and a warning when the machine was busy.

    Busy: other processes kept more than OTHER_CORES_LIMIT cores busy on average during the
    run (measured: the machine's busy CPU time minus this process's). Where that cannot be
    measured, the load averages decide: more load before the run than this run's threads
    left room for, or more than the cores at its end (its own threads included).
    """
    cores = cpu_count() if cores is None else cores
    warning = None
    averages = ("" if before is None or after is None else
                f"; load average {before[0]:.1f} before, {after[0]:.1f} after (1 min)")
    if other_cores is not None:
        if other_cores > OTHER_CORES_LIMIT:
            warning = (f"BUSY MACHINE: other processes kept {other_cores:.2f} of {cores} cores "
                       f"busy on average during the run{averages}: timings and speedups are "
                       "noisy; re-run on an idle machine before trusting them")
    elif before is not None and after is not None and \
            (before[0] > cores - threads + 0.5 or after[0] > cores + 0.5):
        warning = (f"BUSY MACHINE: load average {before[0]:.1f} before and {after[0]:.1f} "
                   f"after the run (1 min; 15 min after: {after[2]:.1f}) on {cores} cores "
                   f"with {threads} threads of ours: timings and speedups are noisy; re-run "
                   "on an idle machine before trusting them")
    return {"cpu_count": cores, "before": list(before) if before else None,
            "after": list(after) if after else None, "other_cores": other_cores,
            "warning": warning}


def _eos_ids(target: LanguageModel) -> set[int]:
    """The end tokens our decoder stops at, so transformers stops at the same ones."""
    return set(target.eos_token_ids)


def _runner_note(target: LanguageModel) -> str:
    """Device, runner and compiled widths of the target, as the report states them."""
    runner = type(getattr(target, "_model", target)).__name__
    widths = getattr(getattr(target, "_model", target), "widths", ())
    compiled = f"compiled widths {list(widths)}" if widths else "eager"
    return f"on {target.device} ({runner}, {compiled})"


def _fixed_notes(config: BenchConfig, dtype: str, runner: str = "") -> list[str]:
    return [f"target {config.target} in {dtype} {runner}, {config.threads} threads; the "
            "transformers methods run the same weights loaded with plain nn.Linear layers "
            "(as its users run it); llama.cpp runs the GGUF in its "
            "native quantization (a different numeric model: its greedy outputs may differ)",
            "methods interleaved per prompt (order rotating), one warm-up generation each; "
            "temperature > 0 uses a fixed seed per prompt, pure temperature sampling, "
            "Algorithm 1's rejection rule (not the coupled rule)",
            "tokens/s counts tokens up to and including the end-of-sequence token; prefill "
            "is included in tokens/s and excluded from decode speedup, c and v"]


def _config_dict(config: BenchConfig) -> dict[str, Any]:
    out = asdict(config)
    for key in ("out", "progress", "command", "baselines", "llamacpp", "lookup_tokens",
                "max_minutes"):
        out.pop(key)
    return out


def _environment() -> dict[str, Any]:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "llama_cpp": _llamacpp_version()}


def _llamacpp_version() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return getattr(llama_cpp, "__version__", "unknown")
