"""Helpers for the server tests: a tiny model directory and a real `specdec serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tiny import perturbed, tiny_llama

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def char_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, so any output decodes back exactly."""
    specials = ["<unk>", "<s>", "</s>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>",
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = chat_template
    return tokenizer


def save_tiny_model(path: Path, chat_template: str | None = CHAT_TEMPLATE,
                    layers: int = 2) -> Path:
    """A tiny random llama (safetensors) and its character tokenizer in `path`."""
    tokenizer = char_tokenizer(chat_template)
    model = tiny_llama(vocab_size=len(tokenizer), layers=layers)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(*args: str, timeout: float = 90.0) -> Iterator[str]:
    """Run `specdec serve ARGS` on a free loopback port; yield its base URL."""
    process, url = start_server(*args, timeout=timeout)
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_server(*args: str, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """Start `specdec serve ARGS` on a free loopback port, healthy; the caller stops it."""
    port = free_port()
    command = [sys.executable, "-c", "import sys; from specdec.cli import main; sys.exit(main())",
               "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
               *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, url


def _wait_healthy(process: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n"
                               f"{process.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not healthy after {timeout}s")


def save_tiny_pair(root: Path, noise: float = 0.3) -> tuple[Path, Path]:
    """Target and drafter directories: the drafter is the target with noisy weights."""
    tokenizer = char_tokenizer()
    target = tiny_llama(vocab_size=len(tokenizer), seed=0)
    paths = root / "target", root / "draft"
    for path, model in zip(paths, (target, perturbed(target, noise)), strict=True):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths
