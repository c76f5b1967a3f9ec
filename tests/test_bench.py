"""`specdec bench` on a tiny random-weight model, and `specdec theory` against Table 1."""

from __future__ import annotations

import json
import string

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from specdec.bench.metrics import OVERALL
from specdec.bench.report import validate
from specdec.bench.suite import BenchConfig, run_benchmark
from specdec.bench.workloads import load_questions
from specdec.cli import main
from specdec.models import wrap
from specdec.prompts import user_prompt_ids

CHARS = string.ascii_letters + string.digits + " .,;:!?'\"()-\n"
PNG = b"\x89PNG\r\n\x1a\n"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer (ids 0-2 special) with a chat template."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {c: i + 3 for i, c in enumerate(CHARS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()  # characters join without spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    return tokenizer


def tiny_model(tokenizer, seed: int, layers: int = 2):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # sharper distributions: clear greedy argmaxes, varied sampling
        model.get_output_embeddings().weight.mul_(20.0)
    return wrap(model, tokenizer, f"tiny{seed}")


def questions_file(tmp_path):
    rows = [{"question_id": 1, "category": "writing", "turns": ["Write a poem, then stop.", "x"]},
            {"question_id": 2, "category": "qa", "turns": ["What is 2 + 2? Answer: 2 + 2 is"]},
            {"question_id": 3, "category": "qa", "turns": ["A third question, never taken."]}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_questions_grouped_and_limited(tmp_path):
    questions = load_questions(questions_file(tmp_path), ["conversation", "qa"], 1)
    assert [(q.question_id, q.category) for q in questions] == [("1", "conversation"),
                                                                 ("2", "qa")]
    assert questions[0].text == "Write a poem, then stop."  # first turn only
    with pytest.raises(ValueError, match="translation"):
        load_questions(questions_file(tmp_path), ["translation"], 1)


def test_chat_template_applied():
    tokenizer = char_tokenizer()
    ids = user_prompt_ids(tokenizer, "hi")
    assert tokenizer.decode(ids) == "<s>user: hi\nassistant: "


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    tokenizer = char_tokenizer()
    target = tiny_model(tokenizer, seed=0)
    drafter = tiny_model(tokenizer, seed=0)  # the target's weights: it drafts what p wants
    config = BenchConfig(target="tiny", questions=str(questions_file(tmp)), out=str(tmp / "out"),
                         drafts=["ngram@2/auto", "tiny-draft"], gammas=[3, "auto"],
                         categories=["conversation", "qa"], per_category=1, max_new_tokens=24,
                         temperatures=[0.0, 1.0], threads=1, progress=False, command="test")
    outputs = run_benchmark(config, target, lambda spec, pack=True: drafter)
    return outputs, json.loads(outputs["json"].read_text())


def test_results_validate_against_schema(bench_run):
    _, document = bench_run
    validate(document)
    names = [m["name"] for m in document["methods"]]
    assert names[:2] == ["specdec plain", "transformers plain"]
    assert {"transformers prompt lookup", "transformers assisted tiny-draft",
            "specdec ngram g=2", "specdec tiny-draft g=auto"} <= set(names)
    assert "specdec ngram g=3" not in names  # its own gammas replace the default ones
    # 2 questions x 2 temperatures x every method, none failed
    assert len(document["records"]) == 2 * 2 * len(names)
    assert not [r for r in document["records"] if r["error"]]
    bad = dict(document, summaries=[{"method": "x"}])
    with pytest.raises(Exception, match="required"):
        validate(bad)


def test_greedy_methods_match_plain_and_stats_add_up(bench_run):
    _, document = bench_run
    greedy = [s for s in document["summaries"] if s["temperature"] == 0
              and s["category"] == OVERALL and s["family"] != "llama.cpp"]
    assert greedy and all(s["greedy_differ"] == 0 for s in greedy)  # float32: token-identical
    model = next(s for s in greedy if s["method"] == "specdec tiny-draft g=3")
    # the target's weights: every greedy draft accepted, up to 3 + 1 tokens per call
    assert model["alpha"] == model["acceptance_rate"] == 1.0
    assert model["tokens_per_call"] >= 3 and model["c"] > 0 and model["v"] > 0
    assert model["predicted_speedup"] > 0 and model["mean_gamma"] <= 3
    assert abs(sum(model["profile"].values()) - 1) < 1e-6
    assert 1 <= len(model["acceptance_by_position"]) <= 3
    plain = next(s for s in greedy if s["method"] == "specdec plain")
    assert plain["speedup"] == pytest.approx(1.0)


def test_plots_and_report_written(bench_run):
    outputs, document = bench_run
    pngs = [p for name, p in outputs.items() if name not in ("json", "report")]
    assert len(pngs) == 4  # two temperatures by category, vs gamma, by position
    for path in pngs:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
    report = outputs["report"].read_text()
    assert "## Goals" in report and "| specdec ngram g=2 |" in report
    assert document["sample"] in report


@pytest.mark.parametrize("alpha, gamma, speed, operations", [
    (0.8, 5, "3.69x", "1.63x"), (0.6, 2, "1.96x", "1.53x"), (0.9, 10, "6.86x", "1.60x")])
def test_theory_prints_table1(capsys, alpha, gamma, speed, operations):
    assert main(["theory", "--alpha", str(alpha), "--gamma", str(gamma)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"gamma={gamma}:"))
    assert f"speedup {speed}" in line and f"operations {operations}" in line


@pytest.mark.parametrize("argv, message", [
    (["--per-category", "0"], "--per-category must be in [1, 1000]"),
    (["--gammas", "4,x"], "--gamma must be 'auto' or an integer"),
    (["--temperatures", "0,-1"], "--temperatures"),
    (["--drafts", ","], "--drafts is empty"),
    (["--drafts", "ngram+smollm2-135m@int3@auto"], "unknown or repeated option @int3"),
    (["--drafts", "self@int4@99"], "--gamma must be 'auto' or an integer"),
])
def test_bench_cli_rejects_bad_options(capsys, argv, message):
    assert main(["bench", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_time_limit_stops_between_questions_and_journal_keeps_records(tmp_path):
    tokenizer = char_tokenizer()
    config = BenchConfig(target="tiny", questions=str(questions_file(tmp_path)),
                         out=str(tmp_path / "out"), drafts=["ngram@2"], baselines=False,
                         categories=["qa", "conversation"], per_category=1, max_new_tokens=8,
                         temperatures=[0.0, 1.0], threads=1, progress=False, max_minutes=0)
    outputs = run_benchmark(config, tiny_model(tokenizer, seed=0), lambda spec, pack=True: None)
    document = json.loads(outputs["json"].read_text())
    validate(document)
    # one whole question (qa comes first: categories alternate in the order asked), 2 methods
    assert {(r["question_id"], r["temperature"]) for r in document["records"]} == \
        {("2", 0.0), ("2", 1.0)}
    assert len(document["records"]) == 4
    assert any("time limit" in note for note in document["notes"])
    journal = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in journal] == document["records"]


def test_categories_default_to_all_of_the_question_file(tmp_path):
    questions = questions_file(tmp_path)
    config = BenchConfig(target="tiny", questions=str(questions), out=str(tmp_path / "out"),
                         drafts=["ngram@2"], baselines=False, per_category=1,
                         max_new_tokens=4, temperatures=[0.0], threads=1, progress=False,
                         max_minutes=0)
    assert config.categories is None
    outputs = run_benchmark(config, tiny_model(char_tokenizer(), seed=0),
                            lambda spec, pack=True: None)
    document = json.loads(outputs["json"].read_text())
    validate(document)  # the report names the categories that ran, not None
    expected = list(dict.fromkeys(q.category for q in load_questions(questions, None, 1)))
    assert document["config"]["categories"] == expected and len(expected) > 1
