"""The report's goals are judged only from enough questions and outside the noise; busy runs
are flagged; the bench CLI finds its questions from any install and checks --drafts first."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

import specdec
from specdec.bench.goals import MIN_QUESTIONS, interval, judge
from specdec.bench.suite import machine_load
from specdec.bench.workloads import DEFAULT_QUESTIONS, EDITING_QUESTIONS, load_questions
from specdec.cli import main
from specdec.machine import OtherJobsMeter, busy_cpu_seconds, cpu_count


def records(speedups: dict[str, list[float]], method: str = "fast") -> list[dict]:
    """Plain at 10 tok/s and `method` at 10 * speedup, one question per speedup."""
    out = []
    for category, values in speedups.items():
        for i, speedup in enumerate(values):
            for name, rate in (("specdec plain", 10.0), (method, 10.0 * speedup)):
                out.append({"method": name, "question_id": f"{category}{i}",
                            "category": category, "temperature": 0.0, "repeat": 0,
                            "tokens": [1] * 32, "seconds": 32 / rate, "error": None})
    return out


def test_two_questions_are_never_judged_however_fast():
    # the run: 2 questions, one per category, 5.13x
    line = judge(records({"qa": [5.0], "summarization": [5.3]}), "fast", "specdec plain",
                 0.0, 2.0)
    assert "NOT JUDGED" in line and "MET" not in line.replace("NOT JUDGED", "")
    assert f">= {MIN_QUESTIONS} per category" in line
    # enough questions in one category, not in the other
    line = judge(records({"qa": [3.0] * 5, "rag": [3.0, 3.1]}), "fast", "specdec plain", 0, 2.0)
    assert "NOT JUDGED** (2 questions in rag;" in line


@pytest.mark.parametrize(("speedups", "verdict"), [
    ([2.5, 2.6, 2.4, 2.55, 2.45, 2.5], "**MET**"),
    ([1.2, 1.3, 1.25, 1.2, 1.3, 1.22], "**MISSED**"),
    ([1.2, 4.0, 1.5, 3.5, 1.1, 4.2], "**UNDECIDED**"),  # mean ~2.2x, spread says noise
])
def test_verdict_follows_the_interval(speedups, verdict):
    line = judge(records({"qa": speedups[:3], "rag": speedups[3:]}), "fast", "specdec plain",
                 0.0, 2.0)
    assert line.endswith(verdict) or verdict in line
    assert sum(v in line for v in ("**MET**", "**MISSED**", "**UNDECIDED**")) == 1


def test_interval_is_a_t_interval_of_log_speedups():
    mean, low, high = interval([2.0, 2.0, 2.0])
    assert mean == pytest.approx(2.0) and low == pytest.approx(2.0) == high
    mean, low, high = interval([1.0, 4.0])  # logs 0, 1.386: sd 0.980, t(1) = 12.706
    assert mean == pytest.approx(2.0)
    assert math.log(high / mean) == pytest.approx(12.706 * 0.98025 / math.sqrt(2), rel=1e-3)


def test_busy_machine_is_flagged():
    assert machine_load((0.1, 0.1, 0.1), (2.0, 1.0, 0.5), threads=2, cores=2)["warning"] is None
    busy = machine_load((2.5, 2.0, 1.0), (4.4, 3.0, 2.0), threads=2, cores=2)
    assert busy["warning"].startswith("BUSY MACHINE: load average 2.5 before and 4.4 after")
    assert busy["before"] == [2.5, 2.0, 1.0] and busy["cpu_count"] == 2
    # a job holding one core of two, and we asked for both
    assert machine_load((1.2, 1, 1), (2.3, 2, 2), threads=2, cores=2)["warning"]
    assert machine_load(None, None, threads=2, cores=2)["warning"] is None


def test_measured_other_jobs_decide_over_load_averages():
    # the load averages of an idle run: the minute of model loading before it, its own 2
    # threads after it; measured, nothing else ran
    idle = machine_load((0.9, 1.3, 1.2), (2.0, 2.0, 2.0), threads=2, cores=2, other_cores=0.03)
    assert idle["warning"] is None and idle["other_cores"] == 0.03
    busy = machine_load((0.1, 0.1, 0.1), (2.0, 1.0, 0.5), threads=2, cores=2, other_cores=0.6)
    assert busy["warning"].startswith("BUSY MACHINE: other processes kept 0.60 of 2 cores")


def test_other_jobs_meter_subtracts_this_process():
    readings = {"busy": [100.0, 112.0], "own": [5.0, 14.0], "clock": [0.0, 10.0]}
    meter = OtherJobsMeter(*(lambda k=k: readings[k].pop(0) for k in ("busy", "own", "clock")))
    assert meter.other_cores() == pytest.approx(0.3)  # 12 s busy, 9 of them ours, over 10 s
    unknown = OtherJobsMeter(busy=lambda: None)
    assert unknown.other_cores() is None


def test_other_jobs_meter_reads_this_machine():
    meter = OtherJobsMeter()
    end = time.process_time() + 0.2
    while time.process_time() < end:  # our own work is not another job's
        pass
    others = meter.other_cores()
    if busy_cpu_seconds() is not None:  # Linux
        assert others is not None and 0.0 <= others <= cpu_count()


def test_default_questions_ship_with_the_package():
    assert DEFAULT_QUESTIONS.is_relative_to(Path(specdec.__file__).parent)
    questions = load_questions(DEFAULT_QUESTIONS)
    assert len(questions) == 240
    assert {q.category for q in questions} == {"conversation", "translation", "summarization",
                                               "qa", "math_reasoning", "rag"}


def test_editing_workload_ships_twenty_edits_with_their_source():
    questions = load_questions("editing")
    assert len(questions) == 20
    assert {q.category for q in questions} == {"code_edit", "doc_edit"}
    rows = [json.loads(line) for line in EDITING_QUESTIONS.read_text().splitlines()]
    assert all(r["license"] == "PSF-2.0" and r["source"].startswith("CPython ") for r in rows)
    assert (EDITING_QUESTIONS.parent / "LICENSE-PSF-2.0.txt").is_file()
    # an edit: the text to change is in the prompt, fenced
    assert all("```" in q.text and "Return the complete updated" in q.text for q in questions)


@pytest.mark.parametrize(("argv", "message"), [
    (["--drafts", "ngram,nonexistent"], "--drafts 'nonexistent': unknown model"),
    (["--drafts", "bigram:/missing.txt@2"], "--drafts 'bigram:/missing.txt': corpus file not"),
    (["--questions", "/missing/q.jsonl"], "--questions: no such file: /missing/q.jsonl"),
])
def test_bench_checks_options_before_loading(capsys, monkeypatch, argv, message):
    import specdec.models.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(loading, "load_model", no_loading)
    assert main(["bench", "--quick", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_quick_help_states_its_cost(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "not a measurement" in out and "min of CPU" in out
