"""Reading a registry GGUF as stored: parse time, decode time, exactness, tokenizer load time.

    python benchmarks/gguf_read.py [--model qwen2.5-coder-0.5b] [--repeats 3] [--check all|N]

Reports, for the (fetched) registry model: time to open the file with specdec's parser and
with gguf.GGUFReader, tensor types, time to decode every tensor (best of --repeats; the first
pass also faults the file's pages in), whether every checked tensor's decode equals
gguf.quants.dequantize bit for bit, and the tokenizer load time from its verified cache
(first conversion if there is none) in a fresh interpreter, imports included.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import torch

from specdec.models.fetch import ensure_model
from specdec.models.gguf_blocks import FLOAT_TYPES, decode_float, group_quantized
from specdec.models.gguf_file import GGUFFile
from specdec.models.gguf_model import read_decoder_spec
from specdec.models.registry import get_entry

TOKENIZER_LOAD = """
import sys, time
start = time.perf_counter()
from specdec.models.gguf_tokenizer import load_gguf_tokenizer
tokenizer = load_gguf_tokenizer(sys.argv[1], sha256=sys.argv[2])
print(f"{time.perf_counter() - start:.3f} {len(tokenizer)} {'torch' in sys.modules}")
"""


def decode_all(file: GGUFFile) -> dict[str, object]:
    out = {}
    for name, info in file.tensors.items():
        raw = file.raw(name)
        out[name] = (decode_float(info.type, raw, info.shape) if info.type in FLOAT_TYPES
                     else group_quantized(info.type, raw, info.shape))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", default="all", help="'all' or how many tensors to check")
    args = parser.parse_args()
    start = time.perf_counter()
    path = ensure_model(args.model)
    verified = time.perf_counter() - start
    start = time.perf_counter()
    file = GGUFFile(path)
    opened = time.perf_counter() - start
    from gguf import GGUFReader
    from gguf.quants import dequantize

    start = time.perf_counter()
    GGUFReader(path)
    reader = time.perf_counter() - start
    print(f"{args.model}: {path.stat().st_size / 1e6:.0f} MB; ensure_model (sha256 check) "
          f"{verified:.3f} s; open {opened:.3f} s "
          f"(gguf.GGUFReader {reader:.2f} s)")
    spec = read_decoder_spec(file)
    print(spec.config)
    types = Counter(info.type.name for info in file.tensors.values())
    print("tensor types:", dict(types.most_common()))
    elements = sum(int(np.prod(info.shape)) for info in file.tensors.values())
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        decoded = decode_all(file)
        times.append(time.perf_counter() - start)
    print(f"decode all {len(decoded)} tensors ({elements / 1e6:.0f} M weights): "
          + ", ".join(f"{t:.2f}" for t in times) + f" s; best {min(times):.2f} s")
    names = list(file.tensors)
    checked = names if args.check == "all" else names[:: max(1, len(names) // int(args.check))]
    exact = 0
    for name in checked:
        info = file.tensors[name]
        expected = torch.from_numpy(np.array(dequantize(file.raw(name), info.type)))
        got = decoded[name] if info.type in FLOAT_TYPES else decoded[name].dequantize()
        exact += bool(got.shape == expected.shape and torch.equal(got, expected))
    print(f"bit-exact vs gguf.quants.dequantize: {exact} / {len(checked)} tensors")
    sha256 = get_entry(args.model).sha256  # ensure_model verified it
    for attempt in ("first", "second"):
        done = subprocess.run([sys.executable, "-c", TOKENIZER_LOAD, str(path), sha256],
                              capture_output=True, text=True, check=True)
        seconds, size, torch_loaded = done.stdout.split()
        print(f"tokenizer load ({attempt} call, fresh interpreter, imports included): "
              f"{seconds} s, {size} tokens, torch imported: {torch_loaded}")
    if exact != len(checked):
        sys.exit(1)


if __name__ == "__main__":
    main()
