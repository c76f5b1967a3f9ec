"""Prefill memory does not grow with prompt length x vocabulary (no logits for the prompt).

Measured in a fresh process, so that memory freed by earlier tests cannot hide an allocation.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROMPT, VOCAB = 4096, 50_000
LIMIT = PROMPT * VOCAB * 4 // 10  # a tenth of the prompt's float32 logits

SCRIPT = """
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from specdec.bench.memory import peak_rss_growth
from specdec.models import wrap
torch.set_num_threads(1)
torch.manual_seed(0)
config = LlamaConfig(vocab_size={vocab}, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings={prompt} + 64, tie_word_embeddings=False)
model = wrap(LlamaForCausalLM(config).eval(), runtime=sys.argv[1])
prompt = torch.randint(0, {vocab}, (1, {prompt}))
model.prefill(prompt[:, :64])  # warm up kernels and allocator
_, growth = peak_rss_growth(lambda: model.prefill(prompt))
print(json.dumps({{"growth": growth, "cached": model.cached_length}}))
"""


@pytest.mark.parametrize("runtime", ["static", "dynamic"])
def test_prefill_peak_memory_stays_below_a_tenth_of_the_prompt_logits(runtime):
    script = SCRIPT.format(vocab=VOCAB, prompt=PROMPT)
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", script, runtime], capture_output=True,
                         text=True, timeout=600, env={"PYTHONPATH": src, "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["cached"] == PROMPT - 1
    assert 0 <= measured["growth"] < LIMIT, f"prefill grew RSS by {measured['growth']} bytes"
