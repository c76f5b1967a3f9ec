"""One chat encoding: generate --chat, chat, the server and the benchmark all use prompts.py."""

from __future__ import annotations

import pytest

from server_support import char_tokenizer, save_tiny_model
from specdec import SpeculativeDecoder
from specdec.bench.suite import bench_prompts
from specdec.bench.workloads import Question
from specdec.cli import main as cli
from specdec.models import wrap
from specdec.prompts import chat_ids, chat_prompt, user_prompt_ids
from specdec.server.engine import Engine
from tiny import tiny_llama

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]


def test_chat_ids_follow_the_template_without_extra_special_tokens():
    tokenizer = char_tokenizer()
    text, ids = chat_prompt(tokenizer, MESSAGES)
    assert text == "<s>system: Be brief.\n<s>user: hi there\n<s>assistant:"
    assert ids == chat_ids(tokenizer, MESSAGES)
    assert ids.count(tokenizer.bos_token_id) == 3  # the template's <s>, no added BOS
    assert tokenizer.decode(ids) == text


def test_user_prompt_without_a_template_is_the_text():
    tokenizer = char_tokenizer(chat_template=None)
    assert user_prompt_ids(tokenizer, "hi") == tokenizer("hi").input_ids


def test_bench_and_server_encode_as_prompts_does():
    tokenizer = char_tokenizer()
    questions = [Question("1", "qa", "What is 2+2?"), Question("2", "math", "x\ny")]
    for prompt, question in zip(bench_prompts(tokenizer, questions), questions, strict=True):
        assert prompt.ids == chat_ids(tokenizer, [{"role": "user", "content": question.text}])
    engine = Engine(SpeculativeDecoder(wrap(tiny_llama(len(tokenizer), layers=1), tokenizer),
                                       None))
    assert engine.encode_chat(MESSAGES) == chat_ids(tokenizer, MESSAGES)


def test_generate_chat_encodes_as_prompts_does(tmp_path, capsys, monkeypatch):
    seen: list[list[int]] = []
    stream = SpeculativeDecoder.stream

    def spy(self, prompt, params=None):
        seen.append(list(prompt))
        return stream(self, prompt, params)

    monkeypatch.setattr(SpeculativeDecoder, "stream", spy)
    model = save_tiny_model(tmp_path / "model", layers=1)
    assert cli(["generate", "hi there", "--system", "Be brief.", "--target", str(model),
                "--dtype", "float32", "--draft", "none", "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    assert seen == [chat_ids(char_tokenizer(), MESSAGES)]


@pytest.mark.parametrize("messages", [MESSAGES, MESSAGES[1:]])
def test_chat_prompt_text_and_ids_agree(messages):
    tokenizer = char_tokenizer()
    text, ids = chat_prompt(tokenizer, messages)
    assert ids == tokenizer(text, add_special_tokens=False).input_ids
