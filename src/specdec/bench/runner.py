"""ONE run: every method on every prompt, interleaved per prompt so noise hits all alike."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

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
    max_seconds: float | None = None  # start no new prompt after this long (whole prompts only)
    journal: Path | None = None  # every record appended here as JSON lines, as it is made
    # the seeds above are for reproducible runs: sampling keeps Algorithm 1's rejection rule
    # unless coupled (seed-keyed noise, SamplingParams.coupled) is asked for
    coupled: bool = False


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
    """Every method on every (repeat, prompt, temperature); methods innermost (interleaved).

    Prompts should alternate categories: a time limit then cuts every category alike. The
    method order rotates from prompt to prompt so none always runs first (warm caches).
    """
    if config.warmup_tokens and prompts:
        warm_up(methods, prompts[0].ids, config.warmup_tokens)
    per_prompt = len(config.temperatures) * len(methods)
    bar = tqdm(total=config.repeats * len(prompts) * per_prompt, desc="bench", unit="gen",
               file=sys.stderr, disable=not config.progress, dynamic_ncols=True)
    records: list[Record] = []
    start = time.perf_counter()
    with bar:
        for repeat in range(config.repeats):
            for i, prompt in enumerate(prompts):
                if records and config.max_seconds is not None and \
                        time.perf_counter() - start > config.max_seconds:
                    return records  # at least one whole question, then whole ones only
                for temperature in config.temperatures:
                    params = SamplingParams(temperature=temperature,
                                            seed=config.seed + 1000 * repeat + i,
                                            max_new_tokens=config.max_new_tokens,
                                            coupled=config.coupled)
                    shift = i % len(methods)
                    for method in methods[shift:] + methods[:shift]:
                        bar.set_postfix_str(f"T={temperature:g} {prompt.question.category} "
                                            f"{method.name}", refresh=False)
                        records.append(_one(method, prompt, params, repeat))
                        _journal(config.journal, records[-1])
                        bar.update()
    return records


def _journal(path: Path | None, record: Record) -> None:
    if path is not None:  # a crash or a kill late in a long run keeps what was measured
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(record)) + "\n")


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
