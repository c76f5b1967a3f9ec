"""ONE run: every method on every prompt, interleaved per prompt so noise hits all alike."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

from tqdm import tqdm

from specdec.bench.methods import Method
from specdec.bench.workloads import Question
from specdec.sampling import SamplingParams


@dataclass(frozen=True)
class RunConfig:
    temperatures: tuple[float, ...] = (0.0, 1.0)
    max_new_tokens: int = 128
    repeats: int = 1
    seed: int = 0  # temperature > 0: prompt i of repeat r uses seed + 1000 * r + i
    warmup_tokens: int = 8  # each method generates this much once before timing starts
    progress: bool = True


@dataclass
class Record:
    """One generation of one method."""

    method: str
    question_id: str
    category: str
    temperature: float
    repeat: int
    prompt_tokens: int
    tokens: list[int]
    seconds: float
    stats: dict | None = None  # GenerationStats.to_dict() for specdec methods
    prefill_s: float = 0.0  # target prefill, inside stats["target_s"] (specdec only)
    drafter_begin_s: float = 0.0  # drafter.begin, inside stats["drafter_s"] (specdec only)
    error: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class Prompt:
    question: Question
    ids: list[int]


def warm_up(methods: Iterable[Method], prompt: list[int], tokens: int) -> None:
    """First calls pay for lazy allocation and kernel selection: keep them out of the timing."""
    for method in methods:
        for temperature in (0.0, 1.0):
            method.run(prompt, SamplingParams(temperature=temperature, seed=0,
                                              max_new_tokens=tokens))


def run(methods: list[Method], prompts: list[Prompt], config: RunConfig) -> list[Record]:
    """Every method on every (repeat, temperature, prompt); methods innermost (interleaved).

    The method order rotates from prompt to prompt so none always runs first (warm caches).
    """
    if config.warmup_tokens and prompts:
        warm_up(methods, prompts[0].ids, config.warmup_tokens)
    total = config.repeats * len(config.temperatures) * len(prompts) * len(methods)
    bar = tqdm(total=total, desc="bench", unit="gen", file=sys.stderr,
               disable=not config.progress, dynamic_ncols=True)
    records = []
    with bar:
        for repeat in range(config.repeats):
            for temperature in config.temperatures:
                for i, prompt in enumerate(prompts):
                    params = SamplingParams(temperature=temperature,
                                            seed=config.seed + 1000 * repeat + i,
                                            max_new_tokens=config.max_new_tokens)
                    shift = i % len(methods)
                    for method in methods[shift:] + methods[:shift]:
                        bar.set_postfix_str(f"T={temperature:g} {prompt.question.category} "
                                            f"{method.name}", refresh=False)
                        records.append(_one(method, prompt, params, repeat))
                        bar.update()
    return records


def _one(method: Method, prompt: Prompt, params: SamplingParams, repeat: int) -> Record:
    question = prompt.question
    record = Record(method.name, question.question_id, question.category, params.temperature,
                    repeat, len(prompt.ids), [], 0.0)
    try:
        outcome = method.run(prompt.ids, params)
    except Exception as error:  # one failing baseline must not lose an hour-long run
        record.error = f"{type(error).__name__}: {error}"
        return record
    record.tokens, record.seconds = outcome.tokens, outcome.seconds
    record.stats = None if outcome.stats is None else outcome.stats.to_dict()
    record.prefill_s, record.drafter_begin_s = outcome.prefill_s, outcome.drafter_begin_s
    return record
