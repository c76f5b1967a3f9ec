"""Builds, loads and picks the path of the compiled kernels: the low-bit product
(group_gemm.cpp), the runner's fused per-layer ops (decoder_ops.cpp) and loading's GGUF
decoding and tile packing (gguf_ops.cpp).

The extension is compiled with ninja on first use into the cache directory, under a name that
hashes the source, the flags and the torch version, so a later process (or another checkout of
the same source) loads the built library without compiling. Where it cannot be built or loaded
(no compiler, no headers), `load_kernels` says why, once, with a warning, and callers use the
pure-torch product in group_fallback.py, which computes the same numbers.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from specdec.cache import cache_dir

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("group_gemm.cpp", "decoder_ops.cpp", "gguf_ops.cpp"))
NAME = "specdec_group_gemm"
# -ffp-contract=off: every fused multiply-add is an explicit fma, so all paths round alike.
# -fopenmp: at::parallel_for is inline OpenMP in torch's headers (serial without it); the
# libgomp.so.1 it links resolves to the copy torch has already loaded, one thread pool.
# -fno-math-errno: sqrt and fma inline (no errno to set); it changes no result.
CFLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp")  # -std: torch's own
LDFLAGS = ("-fopenmp",)
PATH_ENV = "SPECDEC_KERNEL_PATH"  # force a path: avx512vnni, avx2, portable, torch (or auto)
PATHS = ("avx512vnni", "avx2", "portable")  # the compiled ones, fastest first
FALLBACK = "torch"  # the pure-torch product (group_fallback.py)
FUSED_ENV = "SPECDEC_FUSED"  # "0": the static runner's torch ops instead of decoder_ops.cpp
REASON_CHARS = 400  # of a build error's first line (the compiler command is in it) in the warning


class KernelBuildError(RuntimeError):
    """The extension could not be compiled or loaded."""


@dataclass(frozen=True)
class KernelStatus:
    """Whether torch.ops.specdec.group_gemm is registered in this process, and if not, why."""

    available: bool
    reason: str = ""


def build_directory() -> Path:
    """Where this source, built with these flags against this torch, lives."""
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES))
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    return cache_dir() / "kernels" / digest.hexdigest()[:16]


def build(directory: Path) -> Path:
    """Compile the extension into `directory` (ninja; a no-op when up to date); its .so path."""
    from torch.utils import cpp_extension  # lazily: it imports setuptools

    directory.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(name=NAME, sources=[str(source) for source in SOURCES],
                           extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                           build_directory=str(directory), is_python_module=False,
                           verbose=False)
    except Exception as error:  # a compiler, ninja or header failure: all mean "no kernel"
        raise KernelBuildError(f"{type(error).__name__}: {error}") from error
    return directory / f"{NAME}.so"


@functools.cache
def load_kernels() -> KernelStatus:
    """Register the compiled ops in this process (building them first if needed), once."""
    if _registered():  # loaded already (a cleared cache, or another cache directory): a
        return KernelStatus(True)  # second copy of the library would register twice
    library = build_directory() / f"{NAME}.so"
    try:
        if library.exists():
            torch.ops.load_library(str(library))
        else:
            build(library.parent)  # loads what it built
    except (KernelBuildError, OSError, RuntimeError) as error:
        lines = str(error).strip().splitlines()
        reason = lines[0][:REASON_CHARS] if lines else repr(error)
        warnings.warn(f"specdec: the low-bit product kernel is unavailable ({reason}); using "
                      "the pure-torch fallback (same numbers, much slower)", RuntimeWarning,
                      stacklevel=2)
        return KernelStatus(False, reason)
    return KernelStatus(True)


def _registered() -> bool:
    """Whether this process has the compiled ops already (every source's last op)."""
    try:
        for op in ("group_gemm", "attention", "pack_tiles"):
            getattr(torch.ops.specdec, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def kernel_path(requested: str | None = None) -> str:
    """The path a product runs: `requested`, else $SPECDEC_KERNEL_PATH, else the fastest this
    CPU supports; FALLBACK where asked for or where the kernel is unavailable. Raises
    ValueError for an unknown path or one this CPU lacks."""
    name = requested or os.environ.get(PATH_ENV) or "auto"
    if name not in ("auto", FALLBACK, *PATHS):
        raise ValueError(f"unknown kernel path {name!r}: one of auto, {', '.join(PATHS)}, "
                         f"{FALLBACK}")
    if name == FALLBACK or not load_kernels().available:
        return FALLBACK
    try:
        return str(torch.ops.specdec.group_gemm_path(name))
    except RuntimeError as error:
        raise ValueError(str(error).splitlines()[0]) from error


def fused_ops_available() -> bool:
    """Whether the static runner uses the fused per-layer ops (decoder_ops.cpp): compiled
    here and not switched off with SPECDEC_FUSED=0 (which compares them with torch's)."""
    return os.environ.get(FUSED_ENV, "1") != "0" and load_kernels().available
