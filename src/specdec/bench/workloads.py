"""Benchmark prompts: Spec-Bench questions or the editing workload (first turn only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specdec.errors import UsageError

# Spec-Bench's own categories; the MT-bench ones are grouped as "conversation"
CATEGORIES = ("conversation", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = frozenset({"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                      "humanities"})
# shipped with the package (Apache-2.0, see data/README.md): works from any install
DEFAULT_QUESTIONS = Path(__file__).with_name("data") / "spec_bench_dev.jsonl"
# 20 code and document edits from CPython's stdlib (PSF-2.0): most of an answer repeats its prompt
EDITING_QUESTIONS = Path(__file__).with_name("data") / "editing.jsonl"
WORKLOADS = {"spec-bench": DEFAULT_QUESTIONS, "editing": EDITING_QUESTIONS}
MAX_QUESTIONS_BYTES = 64 * 1024 * 1024  # bound what a user-given file may make us read


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str  # one of CATEGORIES (or the file's own name for unknown ones)
    text: str  # first turn


def category_of(raw: str) -> str:
    return "conversation" if raw in MT_BENCH else raw


def questions_path(name_or_path: str | Path) -> Path:
    """A shipped workload's file by name (WORKLOADS), else the path as given."""
    shipped = WORKLOADS.get(str(name_or_path))
    path = shipped if shipped is not None else Path(name_or_path).expanduser()
    if not path.is_file():
        raise UsageError(f"--questions: no such file: {path} (or a workload: "
                         f"{', '.join(WORKLOADS)})")
    return path


def load_questions(path: str | Path, categories: list[str] | None = None,
                   per_category: int | None = None) -> list[Question]:
    """Questions from a Spec-Bench jsonl file (or a WORKLOADS name), up to `per_category` of
    each category; categories None: every category of the file.

    Lines need "question_id", "category" and "turns" (a list of strings; the first is used).
    """
    path = questions_path(path)
    if path.stat().st_size > MAX_QUESTIONS_BYTES:
        raise UsageError(f"{path}: larger than {MAX_QUESTIONS_BYTES} bytes")
    wanted = None if categories is None else set(categories)
    by_category: dict[str, list[tuple[int, Question]]] = {}
    seen_raw: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            raw, question = _parse(json.loads(line), path, number)
            if wanted is not None and question.category not in wanted:
                continue
            # rank within the raw category: a grouped category takes its members round-robin
            seen_raw[raw] = seen_raw.get(raw, 0) + 1
            by_category.setdefault(question.category, []).append((seen_raw[raw], question))
    missing = sorted((wanted or set()) - set(by_category))
    if missing:
        raise UsageError(f"{path}: no questions in categories {', '.join(missing)}")
    # categories alternate (first of each, second of each, ...) so a run cut short by a time
    # limit still covers every category; the order of `categories` decides who goes first
    order = list(categories) if categories else list(by_category)
    ranked = [[q for _, q in sorted(by_category[c], key=lambda item: item[0])][:per_category]
              for c in order]  # stable sort: file order within a rank
    return [group[i] for i in range(max(map(len, ranked))) for group in ranked if i < len(group)]


def _parse(row: Any, path: Path, number: int) -> tuple[str, Question]:
    try:
        text = row["turns"][0]
        if not isinstance(text, str) or not text.strip():
            raise UsageError("first turn is empty")
        raw = str(row["category"])
        return raw, Question(str(row["question_id"]), category_of(raw), text)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise UsageError(f"{path}:{number}: not a Spec-Bench question ({error!r})") from error
