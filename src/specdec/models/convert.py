"""Converted copies of GGUF models: safetensors weights in the loaded dtype + tokenizer files.

Loading a GGUF dequantizes every weight and converts the tokenizer: 30-80 s here, on every
run. After the first load, the loaded model is written once as a transformers directory
(safetensors, never pickle) under <cache>/converted/<gguf stem>.<sha256[:16]>.<dtype>/, keyed
by the GGUF's sha256 and the dtype. It is written into a temporary directory, loaded back and
compared with the GGUF model (logits on a probe text, tokenizer ids, chat template, end
tokens), and only then renamed into place. manifest.json records every file's size and
sha256; each later load checks them (while the weights load, in a second thread) and a copy
that does not match is refused, deleted and rebuilt from the GGUF.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from specdec.models.fetch import CHUNK, cache_dir

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
PROBE_TEXT = "def quicksort(arr):\n    return sorted(arr)  # größer, 速い 🙂\n"

# reads a transformers directory (safetensors only): (model, tokenizer) on the CPU
DirectoryReader = Callable[[Path], tuple[Any, Any]]


class CopyRefused(Exception):
    """A converted copy that does not match its manifest (or cannot be loaded)."""


@dataclass(frozen=True)
class CopyKey:
    """What a converted copy is of: the GGUF (file name, sha256) and the dtype it was loaded in."""

    source: str  # the GGUF's file name
    sha256: str
    dtype: str  # "bfloat16", "float32", "float16"

    @property
    def folder(self) -> Path:
        return root() / f"{Path(self.source).stem}.{self.sha256[:16]}.{self.dtype}"


@dataclass(frozen=True)
class CopyInfo:
    """A converted copy found in the cache (for `specdec models list / clear`)."""

    path: Path
    name: str
    source: str
    dtype: str
    size: int  # bytes on disk


def root() -> Path:
    return cache_dir() / "converted"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(CHUNK * 8):
            digest.update(chunk)  # releases the GIL: runs beside the weight loading
    return digest.hexdigest()


# --- reading ----------------------------------------------------------------------------

def load_copy(key: CopyKey, read: DirectoryReader) -> tuple[Any, Any] | None:
    """(model, tokenizer) of key's converted copy, verified; None if there is none or it was
    refused (and deleted)."""
    folder = key.folder
    if not (folder / MANIFEST).is_file():
        return None
    with ThreadPoolExecutor(1) as pool:
        try:
            files = _manifest_files(folder, key)
            check = pool.submit(_check_files, folder, files)
            try:
                loaded = read(folder)
            except Exception as error:  # noqa: BLE001 - a corrupt file fails in many ways
                check.result()  # a hash mismatch explains it better than the loader's error
                raise CopyRefused(f"cannot load it: {_first_line(error)}") from error
            check.result()
        except CopyRefused as reason:
            _remove(folder)
            _say(f"converted copy {folder} refused ({reason}); deleted, rebuilding it from "
                 "the GGUF")
            return None
    return loaded


def _manifest_files(folder: Path, key: CopyKey) -> dict[str, dict[str, Any]]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        mismatch = [field for field, value in (("format", FORMAT), ("sha256", key.sha256),
                                               ("dtype", key.dtype))
                    if manifest.get(field) != value]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CopyRefused(f"unreadable {MANIFEST}: {_first_line(error)}") from None
    if mismatch or not isinstance(files, dict) or WEIGHTS not in files:
        raise CopyRefused(f"{MANIFEST} does not describe this model ({', '.join(mismatch)})")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    extra = sorted(present - set(files) - {MANIFEST})
    if extra:
        raise CopyRefused(f"unexpected files {', '.join(extra[:3])}")
    return files


def _check_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected.get("size"):
            raise CopyRefused(f"{name} is missing or has the wrong size")
        if sha256_file(path) != expected.get("sha256"):
            raise CopyRefused(f"{name} does not match its sha256")


# --- writing ----------------------------------------------------------------------------

def save_copy(key: CopyKey, hf_model: Any, tokenizer: Any, read: DirectoryReader,
              name: str) -> Path | None:
    """Write, check and install the converted copy of a model read from its GGUF; None (with a
    message) if it is not kept.

    Never raises (disk full, read-only cache, a copy that cannot be read back): the model is
    loaded already, so the run goes on without a copy.
    """
    why_not = _unconvertible(hf_model, tokenizer, key)
    if why_not:
        _say(f"no converted copy of {name}: {why_not}")
        return None
    start = time.perf_counter()
    try:
        parent = root()
        parent.mkdir(parents=True, exist_ok=True)
        needed = sum(t.numel() * t.element_size() for t in _unique_tensors(hf_model).values())
        if shutil.disk_usage(parent).free < needed * 1.1 + (64 << 20):
            _say(f"no converted copy of {name}: {needed / 1e6:.0f} MB needed, not that much "
                 f"free in {parent}")
            return None
        _say(f"writing a converted copy of {name} ({dtype_name(hf_model.dtype)}, "
             f"~{needed / 1e6:.0f} MB) so that later loads take seconds ...")
        temp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{key.folder.name}.",
                                     suffix=".partial"))
        try:
            _write(temp, key, hf_model, tokenizer, name)
            difference = _difference((hf_model, tokenizer), read(temp))
            if difference:
                _say(f"no converted copy of {name}: the copy differs from the GGUF model "
                     f"({difference})")
                return None
            if key.folder.exists():  # a refused copy that could not be deleted, or a race
                _remove(key.folder)
            os.rename(temp, key.folder)  # fails (reported below) if it is still there
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
    except Exception as error:  # noqa: BLE001 - the model is loaded: the run goes on
        _say(f"no converted copy of {name}: {_first_line(error)}")
        return None
    _say(f"kept a converted copy of {name} in {time.perf_counter() - start:.1f}s: "
         f"{key.folder} (`specdec models clear` frees it)")
    return key.folder


def _unconvertible(hf_model: Any, tokenizer: Any, key: CopyKey) -> str | None:
    if hf_model is None or tokenizer is None or not hasattr(hf_model, "save_pretrained"):
        return "not a transformers model with a tokenizer"
    tensors = list(hf_model.state_dict().values())
    if any(not t.is_floating_point() or dtype_name(t.dtype) != key.dtype for t in tensors):
        # e.g. GGUF weights kept packed by transformers' optional kernels: nothing to gain
        return f"its weights are not all plain {key.dtype} tensors"
    return None


def _unique_tensors(hf_model: Any) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (the first name of a shared tensor stays)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in hf_model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident not in seen:
            seen.add(ident)
            tensors[name] = tensor.contiguous()
    return tensors


def _write(folder: Path, key: CopyKey, hf_model: Any, tokenizer: Any, name: str) -> None:
    from safetensors.torch import save_file

    save_file(_unique_tensors(hf_model), str(folder / WEIGHTS), metadata={"format": "pt"})
    config = copy.deepcopy(hf_model.config)
    if hasattr(config, "quantization_config"):  # the weights are plain tensors now
        del config.quantization_config
    config.save_pretrained(folder)
    if getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _list_added_tokens(folder / "tokenizer_config.json", tokenizer)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size,
                                                "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    import transformers

    manifest = {"format": FORMAT, "name": name, "source": key.source, "sha256": key.sha256,
                "dtype": key.dtype, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    for path in folder.rglob("*"):  # mkdtemp made the folder private; a user cache is not
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(folder, 0o755)


def _list_added_tokens(config_path: Path, tokenizer: Any) -> None:
    """Name the added tokens in tokenizer_config.json, as transformers 4 wrote it.

    Without them transformers 5 parses the whole tokenizer.json (11 MB for Qwen) in Python a
    second time to find them: ~0.4 s of every load here.
    """
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if not config_path.is_file() or not added:
        return
    config = json.loads(config_path.read_text())
    if "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {str(i): token.__getstate__()
                                          for i, token in sorted(added.items())}
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _difference(original: tuple[Any, Any], loaded: tuple[Any, Any]) -> str | None:
    """What differs between the GGUF (model, tokenizer) and its loaded copy, or None."""
    (model_a, a), (model_b, b) = original, loaded
    ids = a(PROBE_TEXT).input_ids
    if b(PROBE_TEXT).input_ids != ids or a.decode(ids) != b.decode(ids) or len(a) != len(b):
        return "tokenizer"
    if _added(a) != _added(b):
        return "added tokens"
    if getattr(a, "chat_template", None) != getattr(b, "chat_template", None):
        return "chat template"
    if (a.eos_token_id, _eos(model_a)) != (b.eos_token_id, _eos(model_b)):
        return "end-of-sequence tokens"
    probe = torch.tensor([ids[:16]])
    with torch.inference_mode():
        same = torch.equal(model_a(input_ids=probe).logits, model_b(input_ids=probe).logits)
    return None if same else "logits"


def _added(tokenizer: Any) -> dict[int, Any]:
    return {i: (str(t), t.special) for i, t in
            (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}


def _eos(hf_model: Any) -> Any:
    return getattr(getattr(hf_model, "generation_config", None), "eos_token_id", None)


# --- listing and clearing ---------------------------------------------------------------

def list_copies() -> list[CopyInfo]:
    """Converted copies in the cache (a folder without a readable manifest shows as '?')."""
    found = []
    folder = root()
    if not folder.is_dir():
        return []
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            name, source, dtype = manifest["name"], manifest["source"], manifest["dtype"]
        except (OSError, ValueError, KeyError, TypeError):
            name = source = dtype = "?"  # a partial or broken folder: `clear` removes it
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        found.append(CopyInfo(path, str(name), str(source), str(dtype), size))
    return found


def remove_copies(name: str | None = None) -> list[CopyInfo]:
    """Delete the converted copies of `name` (registry name or GGUF file name), or all."""
    removed = [info for info in list_copies()
               if name is None or name in (info.name, info.source, Path(info.source).stem)]
    for info in removed:
        _remove(info.path)
    return removed


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _say(message: str) -> None:
    print(f"specdec: {message}", file=sys.stderr, flush=True)
