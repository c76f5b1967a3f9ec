"""`specdec chat` fed through stdin: the history reaches the model, /reset forgets it."""

from __future__ import annotations

import io

import pytest

from server_support import CHAT_TEMPLATE, char_tokenizer, save_tiny_model
from specdec import SamplingParams, SpeculativeDecoder
from specdec.cli import main as cli
from specdec.models.loading import load_model

MAX_NEW = 12


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return {"chat": save_tiny_model(root / "chat", layers=1),
            "plain": save_tiny_model(root / "plain", chat_template=None, layers=1)}


def render(messages: list[dict]) -> str:
    """The test template by hand: what the model must be fed."""
    text = "".join(f"<s>{m['role']}: {m['content']}\n" for m in messages)
    return text + "<s>assistant:"


def test_history_reaches_the_model_and_reset_forgets_it(target, capsys, monkeypatch):
    prompts: list[list[int]] = []
    stream = SpeculativeDecoder.stream

    def spy(self, prompt, params=None):
        prompts.append(list(prompt))
        return stream(self, prompt, params)

    monkeypatch.setattr(SpeculativeDecoder, "stream", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nsecond \\\nline\n/reset\nagain\n"))
    code = cli(["chat", "--target", str(target["chat"]), "--dtype", "float32", "--draft",
                "ngram", "--gamma", "3", "--max-new-tokens", str(MAX_NEW), "--system", "Be.",
                "--stats"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert CHAT_TEMPLATE  # the template the tiny model carries, rendered by `render`
    fed, prompts = prompts, []  # what the chat fed the model; the library's calls go apart
    assert len(fed) == 3

    # the same turns through the library: each reply is greedy on the whole history
    decoder = SpeculativeDecoder(load_model(str(target["chat"]), dtype="float32"), None)
    tokenizer = char_tokenizer()
    system = [{"role": "system", "content": "Be."}]
    history: list[dict] = []
    replies = []
    for turn, user in enumerate(["hello", "second \nline", "again"]):
        if turn == 2:
            history = []  # /reset
        history.append({"role": "user", "content": user})
        ids = tokenizer(render(system + history), add_special_tokens=False).input_ids
        assert fed[turn] == ids, f"turn {turn}"
        reply = decoder.generate(ids, SamplingParams(temperature=0, max_new_tokens=MAX_NEW))
        history.append({"role": "assistant", "content": reply.text})
        replies.append(reply.text)
    assert out == "".join(reply + "\n" for reply in replies)
    assert err.count("[stopped: length, 12 new tokens") == 3 and "[conversation reset]" in err
    assert err.count("tokens/call") == 3


def test_exit_command_and_errors(target, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("/exit\nnever answered\n"))
    code = cli(["chat", "--target", str(target["chat"]), "--dtype", "float32"])
    out, err = capsys.readouterr()
    assert code == 0 and out == ""
    code = cli(["chat", "--target", str(target["plain"])])
    out, err = capsys.readouterr()
    last = err.rstrip("\n").split("\n")[-1]  # after transformers' loading progress
    assert code == 1 and last.startswith("specdec: error: ") and "has no chat template" in last
    assert "Traceback" not in err
    # a turn that cannot fit the context is refused with a message, and the chat goes on
    monkeypatch.setattr("sys.stdin", io.StringIO("x" * 600 + "\nhi\n"))
    code = cli(["chat", "--target", str(target["chat"]), "--dtype", "float32",
                "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    assert code == 0 and "does not fit the context of 512 tokens" in err
    assert out.count("\n") == 1  # the second turn was answered
