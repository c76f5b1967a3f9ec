"""A GGUF's tokenizer and chat template, converted once and then read from a verified cache.

transformers converts a GGUF's vocabulary into a fast tokenizer in tens of seconds (it parses
the whole file with gguf-py). The first load pays that, checks that the saved copy encodes,
decodes and renders the chat template exactly like the converted tokenizer, and keeps the
copy in `<cache>/gguf-tokenizers/<sha256 of the GGUF>/` with a manifest of its files'
sha256s. Later loads check the manifest and build `PreTrainedTokenizerFast` from the files
(about a second, most of it importing transformers' tokenizer module; no modeling code). A
copy whose files do not match its manifest is refused and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from specdec.errors import ModelLoadError
from specdec.models.fetch import DIGESTS, cache_dir
from specdec.models.file_digest import cached_sha256

TOKENIZERS = "gguf-tokenizers"
MANIFEST = "manifest.json"
# what a saved copy must reproduce exactly: multi-byte characters, an emoji, whitespace runs,
# code and numbers
PROBE = ("Hello, wörld! Ünïcödé ½ — 你好, 世界 😀🚀\n\n\tdef f(x):\n        return x ** 2  # 12345"
         " 3.14159 <b>tags</b> https://example.com/a?b=c")
CHAT_PROBE = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "Say hi."}]


def load_gguf_tokenizer(path: str | Path, sha256: str | None = None,
                        root: Path | None = None) -> Any:
    """The GGUF's tokenizer (a transformers `PreTrainedTokenizerFast`), from the cache when a
    verified copy is there. `sha256` is the GGUF's digest if the caller already verified it
    (registry models); otherwise it is computed once and remembered by file identity."""
    path = Path(path)
    root = cache_dir() if root is None else root
    digest = sha256 or cached_sha256(path, root / DIGESTS)
    folder = root / TOKENIZERS / digest
    if folder.exists():
        problem = manifest_problem(folder)
        if problem is None:
            return read_cached(folder)
        print(f"specdec: refusing the cached tokenizer in {folder} ({problem}); rebuilding it",
              file=sys.stderr)
    return convert_and_cache(path, folder)


def read_cached(folder: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def manifest_problem(folder: Path) -> str | None:
    """Why the copy in `folder` cannot be trusted, or None when every file matches."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no readable manifest"
    if not isinstance(manifest, dict) or not manifest:
        return "an empty manifest"
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    if present != set(manifest):
        return f"files {sorted(present ^ set(manifest))} differ from the manifest"
    for name, expected in manifest.items():
        if _sha256(folder / name) != expected:
            return f"{name} does not match its sha256"
    return None


def convert_and_cache(path: Path, folder: Path) -> Any:
    """Convert with transformers, save, verify the saved copy, then move it into place."""
    from transformers import AutoTokenizer

    print(f"specdec: converting the tokenizer of {path.name} (once; later loads read a "
          "cached copy) ...", file=sys.stderr, flush=True)
    try:
        converted = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  local_files_only=True)
    except Exception as error:  # transformers raises many kinds for a bad or odd GGUF
        raise ModelLoadError(f"cannot read the tokenizer of {path}: {error}") from error
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        converted.save_pretrained(str(temp))
        mismatch = differences(converted, read_cached(temp))
        if mismatch:
            raise ModelLoadError(f"the saved tokenizer of {path.name} differs from the "
                                 f"converted one ({mismatch}); not caching it")
        manifest = {p.name: _sha256(p) for p in sorted(temp.iterdir())}
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temp, folder)
    finally:
        if temp.exists():
            shutil.rmtree(temp)
    return read_cached(folder)


def differences(expected: Any, actual: Any) -> str | None:
    """What `actual` does differently from `expected` on the probes, or None."""
    ids = expected.encode(PROBE, add_special_tokens=True)
    checks = {
        "encoding": (ids, actual.encode(PROBE, add_special_tokens=True)),
        "decoding": (expected.decode(ids), actual.decode(ids)),
        "vocabulary": (expected.get_vocab(), actual.get_vocab()),
        "special tokens": ((expected.bos_token, expected.eos_token, expected.pad_token,
                            expected.all_special_tokens),
                           (actual.bos_token, actual.eos_token, actual.pad_token,
                            actual.all_special_tokens)),
        "chat template": (expected.chat_template, actual.chat_template)}
    if expected.chat_template:
        checks["rendered chat"] = tuple(
            t.apply_chat_template(CHAT_PROBE, tokenize=False, add_generation_prompt=True)
            for t in (expected, actual))
    wrong = [name for name, (a, b) in checks.items() if a != b]
    return ", ".join(wrong) or None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
