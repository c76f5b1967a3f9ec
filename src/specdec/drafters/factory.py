"""Build a drafter and a gamma policy from the short specs the CLI, server and bench accept.

Drafter specs:  none | ngram | ngram:MIN:MAX | ngram:tree[:MIN:MAX] | suffix[:OPTIONS]
                | unigram:FILE | bigram:FILE
                | MODEL | self
                | LOOKUP+MODEL | LOOKUP+self          (LOOKUP: ngram or ngram:MIN:MAX)
MODEL is anything the loader accepts (a registry name or a local path); MODEL and self take
'@' options: @int8 / @int4 (weight-only low-bit linear layers, faster one-token forwards) and,
for self, @vocab=N (a drafting head over the N most frequent tokens plus the context's).
`self` drafts with the target's own weights (runtime.low_bit_view): no second model.
Gamma specs:    an integer in [0, MAX_GAMMA] | auto; the bench appends them as SPEC@G1/G2/...
`parse_draft` and `split_gammas` are the one parser of these strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from specdec.control.policy import GammaPolicy
from specdec.drafters.base import Drafter
from specdec.drafters.model import ModelDrafter
from specdec.errors import UsageError, VocabularyMismatchError
from specdec.language_model import LanguageModel, check_same_vocabulary

MAX_GAMMA = 64
MAX_VOCAB = 10_000_000  # bound on @vocab=N
SELF = "self"
KINDS = ("none", "ngram", "ngram:MIN:MAX", "ngram:tree[:MIN:MAX]", "suffix[:global][:nodes=N]",
         "unigram:FILE",
         "bigram:FILE", "MODEL[@int8|@int4]",
         "self[@int8|@int4][@vocab=N]", "ngram+MODEL[@...]", "ngram+self[@...]")
MODEL_FREE = ("none", "ngram", "unigram", "bigram", "suffix")


@dataclass(frozen=True)
class DraftSpec:
    """A parsed drafter spec: an optional prompt-lookup part, then one drafter."""

    lookup: str | None  # "ngram" / "ngram:MIN:MAX" before a '+', else None
    kind: str  # none | ngram | unigram | bigram | model | self
    arg: str = ""  # ngram's "MIN:MAX", the corpus FILE, or the model name / path
    bits: int | None = None  # @int8 / @int4
    vocab: int | None = None  # @vocab=N (self only)

    @property
    def model(self) -> str | None:
        """The model the loader must provide (None for model-free drafters and self)."""
        return self.arg if self.kind == "model" else None


def parse_draft(spec: str) -> DraftSpec:
    """Parse a --draft spec (no gammas; see split_gammas). Raises ValueError on bad input."""
    spec = spec.strip()
    lookup = None
    head, plus, rest = spec.partition("+")
    if plus and head.split(":", 1)[0] == "ngram" and not Path(spec).exists():
        if _ngram_args(head.partition(":")[2])[0]:  # validates
            raise UsageError(f"--draft {head}+MODEL: the lookup before '+' drafts lines; "
                             "use ngram or ngram:MIN:MAX")
        if not rest.strip():
            raise UsageError(f"--draft {head}+MODEL needs a model name or path after '+'")
        lookup, spec = head, rest.strip()
    if spec.lower() in ("", "none"):
        if lookup:
            raise UsageError(f"--draft {lookup}+MODEL needs a model name or path after '+'")
        return DraftSpec(None, "none")
    kind, _, arg = spec.partition(":")
    if kind in MODEL_FREE[1:]:
        if lookup:
            raise UsageError(f"--draft {lookup}+{spec}: only a model or self may follow '+'")
        return DraftSpec(None, kind, arg)
    if Path(spec).exists():  # a local model path is taken as it is, '@' and ':' included
        return DraftSpec(lookup, "model", spec)
    name, *options = spec.split("@")
    if arg and "@" not in kind and len(kind) > 1 and not Path(name).exists():
        raise UsageError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    bits, vocab = _options(name, options)
    if name == SELF:
        return DraftSpec(lookup, SELF, "", bits, vocab)
    if vocab is not None:
        raise UsageError(f"--draft {spec}: @vocab=N applies to self only")
    if not name:
        raise UsageError(f"--draft {spec!r} names no model before '@'")
    return DraftSpec(lookup, "model", name, bits)


def split_gammas(entry: str) -> tuple[str, list[int | str] | None]:
    """'SPEC@G1/G2/...' -> (SPEC, [G1, G2, ...]); (SPEC, None) without a gamma suffix.

    Only a last '@' part made of gammas (integers, 'auto') is one: 'x@int8' is a spec.
    """
    entry = entry.strip()
    spec, at, tail = entry.rpartition("@")
    if not at or not tail.strip():
        return entry, None
    parts = [p.strip().lower() for p in tail.split("/")]
    if not all(p == "auto" or p.isdigit() for p in parts):
        return entry, None
    return spec, [build_gamma(p) if p != "auto" else "auto" for p in parts]  # type: ignore[misc]


def build_drafter(spec: str, target: LanguageModel,
                  loader: Callable[[str], LanguageModel]) -> Drafter | None:
    """The drafter named by `spec` for `target`; None for plain decoding."""
    parsed = parse_draft(spec)
    if parsed.kind == "none":
        return None
    if parsed.kind == "ngram":
        return _ngram(parsed.arg)
    if parsed.kind == "suffix":
        return _suffix(parsed.arg)
    if parsed.kind in ("unigram", "bigram"):
        return _ngram_lm(parsed.kind, parsed.arg, target)
    drafter = _self(parsed, target) if parsed.kind == SELF else \
        _model_drafter(parsed, target, loader)
    if parsed.lookup is None:
        return drafter
    from specdec.drafters.combined import CombinedDrafter

    return CombinedDrafter(_ngram(parsed.lookup.partition(":")[2]), drafter)


def build_gamma(value: str | int) -> int | Callable[[], GammaPolicy]:
    """An integer gamma, or for 'auto' a factory of controllers, one per generation: the line
    controller (GammaController), or for tree drafts the node-budget controller
    (control.budget.AutoPolicies); a factory's controllers share their measured timings."""
    text = str(value).strip().lower()
    if text == "auto":
        from specdec.control.budget import AutoPolicies

        return AutoPolicies()
    try:
        gamma = int(text)
    except ValueError:
        gamma = -1
    if not 0 <= gamma <= MAX_GAMMA:
        raise UsageError(f"--gamma must be 'auto' or an integer in [0, {MAX_GAMMA}], got {value!r}")
    return gamma


def _options(name: str, options: list[str]) -> tuple[int | None, int | None]:
    bits = vocab = None
    for option in (o.strip().lower() for o in options):
        if option in ("int8", "int4") and bits is None:
            bits = int(option[3:])
        elif option.startswith("vocab=") and vocab is None:
            text = option[len("vocab="):].replace("_", "")
            if not text.isdigit() or not 1 <= int(text) <= MAX_VOCAB:
                raise UsageError(f"@vocab=N needs an integer N in [1, {MAX_VOCAB}], "
                                 f"got {option!r}")
            vocab = int(text)
        else:
            raise UsageError(f"unknown or repeated option @{option} after {name!r}; known: "
                             "@int8, @int4, @vocab=N (self only)")
    return bits, vocab


def _ngram_args(arg: str) -> tuple[bool, tuple[int, int] | None]:
    """'' | MIN:MAX | tree | tree:MIN:MAX -> (trees?, sizes or None for the defaults)."""
    parts = arg.split(":") if arg else []
    tree = bool(parts) and parts[0].strip().lower() == "tree"
    parts = parts[1:] if tree else parts
    if not parts:
        return tree, None
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError("--draft ngram:MIN:MAX needs two integers (ngram:tree:MIN:MAX "
                         f"likewise), got 'ngram:{arg}'")
    return tree, (int(parts[0]), int(parts[1]))


def _ngram(arg: str) -> Drafter:
    from specdec.drafters.ngram import NgramDrafter
    from specdec.drafters.ngram_tree import NgramTreeDrafter

    tree, sizes = _ngram_args(arg)
    kind = NgramTreeDrafter if tree else NgramDrafter
    return kind() if sizes is None else kind(*sizes)


def _suffix(arg: str) -> Drafter:
    from specdec.drafters.suffix import SuffixDrafter, parse_suffix

    return SuffixDrafter(parse_suffix(arg))


def _ngram_lm(kind: str, arg: str, target: LanguageModel) -> Drafter:
    from specdec.drafters.ngram_lm import NgramLMDrafter

    if not arg:
        raise UsageError(f"--draft {kind}:FILE needs a text corpus file")
    if target.tokenizer is None:
        raise UsageError(f"--draft {kind}:FILE needs a target with a tokenizer")
    order = 1 if kind == "unigram" else 2
    return NgramLMDrafter.from_file(arg, target.tokenizer, target.vocab_size, order)


def _self(parsed: DraftSpec, target: LanguageModel) -> Drafter:
    from specdec.drafters.self_spec import SelfDraftConfig, build_self_drafter

    return build_self_drafter(target, SelfDraftConfig(bits=parsed.bits, vocab=parsed.vocab))


def _model_drafter(parsed: DraftSpec, target: LanguageModel,
                   loader: Callable[[str], LanguageModel]) -> Drafter:
    """ModelDrafter when the vocabularies agree, else the exact cross-tokenizer drafter."""
    model = loader(parsed.arg)
    if parsed.bits is not None:
        model = _quantized(model, parsed.bits)
    try:
        check_same_vocabulary(target, model)
    except VocabularyMismatchError:
        from specdec.drafters.cross_tokenizer import CrossTokenizerDrafter

        return CrossTokenizerDrafter(model, target)
    return ModelDrafter(model, target.vocab_size)


def _quantized(model: LanguageModel, bits: int) -> LanguageModel:
    """A low-bit view of a transformers-backed model (the loader's stays as it was)."""
    from specdec.runtime.low_bit_view import low_bit_view
    from specdec.runtime.wrap import wrap

    hf_model = getattr(model, "model", None)
    if hf_model is None:
        raise UsageError(f"@int{bits} needs a transformers model, {model.name!r} is not one")
    # a view: the loader's model keeps its layers; norms and embeddings are shared, not copied
    return wrap(low_bit_view(hf_model, bits), model.tokenizer, f"{model.name}@int{bits}",
                compile=bool(getattr(model, "widths", ())))


def validate_spec(spec: str, flag: str = "--draft") -> None:
    """Check a drafter spec without loading anything, so a typo fails before the target loads.

    Checks the kind, ngram sizes, that corpus files exist and can be read, and that model
    names are registry names or existing paths. Errors name `flag` (the option the user typed).
    """
    spec = spec.strip()
    try:
        parsed = parse_draft(spec)
        if parsed.lookup is not None:
            _ngram(parsed.lookup.partition(":")[2])
        if parsed.kind == "ngram":
            _ngram(parsed.arg)
        elif parsed.kind == "suffix":
            _suffix(parsed.arg)
        elif parsed.kind in ("unigram", "bigram"):
            _check_corpus(parsed.kind, parsed.arg)
        elif parsed.kind == "model":
            _check_model_spec(parsed.arg)
    except (ValueError, OSError) as error:
        message = str(error).removeprefix("--draft ").removeprefix("--draft: ")
        raise UsageError(f"{flag} {spec!r}: {message}") from None


def _check_corpus(kind: str, arg: str) -> None:
    from specdec.drafters.ngram_lm import MAX_CORPUS_BYTES

    if not arg:
        raise UsageError(f"{kind}:FILE needs a text corpus file")
    path = Path(arg).expanduser()
    if not path.exists():
        raise UsageError(f"corpus file not found: {path}")
    if not path.is_file():
        raise UsageError(f"corpus {path} is not a file")
    if path.stat().st_size > MAX_CORPUS_BYTES:
        raise UsageError(f"corpus file {path} is larger than {MAX_CORPUS_BYTES} bytes")
    try:
        with open(path, "rb") as data:
            data.read(1)
    except OSError as error:
        raise UsageError(f"cannot read corpus file {path}: {error.strerror}") from None


def _check_model_spec(name: str) -> None:
    """A drafter model (options already parsed off) must be a registry name or a path."""
    from specdec.models.registry import REGISTRY

    if name in REGISTRY or Path(name).expanduser().exists():
        return
    raise UsageError(f"unknown model {name!r}: not a registry name "
                     f"({', '.join(REGISTRY)}), an existing directory or a .gguf file")
