"""Build a drafter and a gamma policy from the short specs the CLI and server accept.

Drafter specs:  none | ngram | ngram:MIN:MAX | unigram:FILE | bigram:FILE | MODEL | ngram+MODEL
where MODEL is anything the loader accepts (a registry name or a local path), optionally with
the suffix @int8: the drafter's linear layers in weight-only int8 (faster one-token forwards).
Gamma specs:    an integer in [0, MAX_GAMMA] | auto
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from specdec.controller import GammaPolicy
from specdec.drafters.base import Drafter
from specdec.drafters.model import ModelDrafter
from specdec.errors import VocabularyMismatchError
from specdec.models.base import LanguageModel, check_same_vocabulary

MAX_GAMMA = 64
KINDS = ("none", "ngram", "ngram:MIN:MAX", "unigram:FILE", "bigram:FILE", "MODEL[@int8]",
         "ngram+MODEL[@int8]")
_PREFIXED = ("ngram", "unigram", "bigram")


def build_drafter(spec: str, target: LanguageModel,
                  loader: Callable[[str], LanguageModel]) -> Drafter | None:
    """The drafter named by `spec` for `target`; None for plain decoding."""
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return None
    if spec.startswith("ngram+"):
        from specdec.drafters.combined import CombinedDrafter

        return CombinedDrafter(_ngram(""), _model_drafter(spec[len("ngram+"):], target, loader))
    kind, _, arg = spec.partition(":")
    if kind == "ngram":
        return _ngram(arg)
    if kind in ("unigram", "bigram"):
        return _ngram_lm(kind, arg, target)
    if arg and not Path(spec).exists() and len(kind) > 1:  # "C:\\..." style paths pass
        raise ValueError(f"unknown --draft kind {kind!r}; known: {', '.join(KINDS)}")
    return _model_drafter(spec, target, loader)


def build_gamma(value: str | int) -> int | Callable[[], GammaPolicy]:
    """An integer gamma, or for 'auto' a factory of GammaController (one per generation)."""
    text = str(value).strip().lower()
    if text == "auto":
        from specdec.controller_auto import GammaController

        return GammaController
    try:
        gamma = int(text)
    except ValueError:
        gamma = -1
    if not 0 <= gamma <= MAX_GAMMA:
        raise ValueError(f"--gamma must be 'auto' or an integer in [0, {MAX_GAMMA}], got {value!r}")
    return gamma


def _ngram(arg: str) -> Drafter:
    from specdec.drafters.ngram import NgramDrafter

    if not arg:
        return NgramDrafter()
    parts = arg.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--draft ngram:MIN:MAX needs two integers, got 'ngram:{arg}'")
    return NgramDrafter(int(parts[0]), int(parts[1]))


def _ngram_lm(kind: str, arg: str, target: LanguageModel) -> Drafter:
    from specdec.drafters.ngram_lm import NgramLMDrafter

    if not arg:
        raise ValueError(f"--draft {kind}:FILE needs a text corpus file")
    if target.tokenizer is None:
        raise ValueError(f"--draft {kind}:FILE needs a target with a tokenizer")
    order = 1 if kind == "unigram" else 2
    return NgramLMDrafter.from_file(arg, target.tokenizer, target.vocab_size, order)


def _model_drafter(spec: str, target: LanguageModel,
                   loader: Callable[[str], LanguageModel]) -> Drafter:
    """ModelDrafter when the vocabularies agree, else the exact cross-tokenizer drafter."""
    if not spec:
        raise ValueError("--draft ngram+MODEL needs a model name or path after '+'")
    name, _, option = spec.rpartition("@") if spec.endswith("@int8") else (spec, "", "")
    model = loader(name)
    if option:
        model = _int8(model)
    try:
        check_same_vocabulary(target, model)
    except VocabularyMismatchError:
        from specdec.drafters.cross_tokenizer import CrossTokenizerDrafter

        return CrossTokenizerDrafter(model, target)
    return ModelDrafter(model)


def _int8(model: LanguageModel) -> LanguageModel:
    """A weight-only int8 copy of a transformers-backed model (the loader's stays as it was)."""
    from specdec.models.quantize import quantize_int8
    from specdec.models.wrap import wrap

    hf_model = getattr(model, "model", None)
    if hf_model is None:
        raise ValueError(f"@int8 needs a transformers model, {model.name!r} is not one")
    return wrap(quantize_int8(hf_model), model.tokenizer, f"{model.name}@int8")


def validate_spec(spec: str, flag: str = "--draft") -> None:
    """Check a drafter spec without loading anything, so a typo fails before the target loads.

    Checks the kind, ngram sizes, that corpus files exist and can be read, and that model
    names are registry names or existing paths. Errors name `flag` (the option the user typed).
    """
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return
    try:
        if spec.startswith("ngram+"):
            _check_model_spec(spec[len("ngram+"):])
            return
        kind, _, arg = spec.partition(":")
        if kind == "ngram":
            _ngram(arg)
        elif kind in ("unigram", "bigram"):
            _check_corpus(kind, arg)
        elif arg and not Path(spec).exists() and len(kind) > 1:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        else:
            _check_model_spec(spec)
    except (ValueError, OSError) as error:
        message = str(error).removeprefix("--draft ").removeprefix("--draft: ")
        raise ValueError(f"{flag} {spec!r}: {message}") from None


def _check_corpus(kind: str, arg: str) -> None:
    from specdec.drafters.ngram_lm import MAX_CORPUS_BYTES

    if not arg:
        raise ValueError(f"{kind}:FILE needs a text corpus file")
    path = Path(arg).expanduser()
    if not path.exists():
        raise ValueError(f"corpus file not found: {path}")
    if not path.is_file():
        raise ValueError(f"corpus {path} is not a file")
    if path.stat().st_size > MAX_CORPUS_BYTES:
        raise ValueError(f"corpus file {path} is larger than {MAX_CORPUS_BYTES} bytes")
    try:
        with open(path, "rb") as data:
            data.read(1)
    except OSError as error:
        raise ValueError(f"cannot read corpus file {path}: {error.strerror}") from None


def _check_model_spec(spec: str) -> None:
    """A drafter model must be a registry name or an existing file or directory."""
    from specdec.models.registry import REGISTRY

    if not spec:
        raise ValueError("ngram+MODEL needs a model name or path after '+'")
    for name in dict.fromkeys((spec, spec.removesuffix("@int8"))):
        if name in REGISTRY or Path(name).expanduser().exists():
            return
    raise ValueError(f"unknown model {spec.removesuffix('@int8')!r}: not a registry name "
                     f"({', '.join(REGISTRY)}), an existing directory or a .gguf file")
