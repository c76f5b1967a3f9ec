"""The protocol the decoding loop and the model drafter rely on, and nothing more."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from specdec.errors import VocabularyMismatchError

RUNTIMES = ("auto", "static", "dynamic")  # wrap(runtime=...): "auto" picks one of the others


@runtime_checkable
class LanguageModel(Protocol):
    """A model with a KV cache that can grow by several tokens at once and shrink.

    Subclass it to inherit the defaults of fork(), warmup() and prefill_from().

    Invariant kept by callers: the cache holds the decoder context minus its last token,
    the *pending* token, which is fed with the next `extend`.
    """

    name: str
    vocab_size: int  # width of the logits
    max_length: int | None  # context window in tokens, None if unbounded
    tokenizer: Any  # a transformers tokenizer, or None
    eos_token_ids: frozenset[int]  # ids that end a sequence
    device: torch.device  # where extend's logits live; inputs may come from anywhere
    runtime: str  # the runner wrap() built: "static" or "dynamic"

    def prefill(self, prompt_ids: torch.Tensor, reserve: int = 0) -> torch.Tensor:
        """Reset the cache for prompt_ids [B, T]; return the decoder context [B, T'].

        Decoder-only models return the prompt with all but its last token cached;
        encoder-decoder models encode the prompt and return the decoder start token.
        reserve: positions the caller expects to add after the prompt (a capacity hint).
        No logits are computed for the prompt.
        """
        ...

    def extend(self, tokens: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """Feed tokens [B, k] in ONE forward; float32 logits [B, k, V] on `device`.

        last: return (and compute) the logits of only the last `last` positions.
        """
        ...

    def rollback(self, n: int) -> None:
        """Drop the last n cached positions (move the write position; never recompute)."""
        ...

    # Whether extend_tree verifies branching trees; False: lines only (a chain of parents).
    verifies_trees: bool

    def extend_tree(self, tokens: torch.Tensor, parents: list[int]) -> torch.Tensor:
        """Feed a token tree [1, N] in ONE forward; float32 logits [1, N, V] per node.

        parents[i]: the node before node i (an earlier index), or -1 for a node that follows
        the cached context. Node i sees the cached context and its ancestors only, at
        position cached_length + depth(i). cached_length grows by N until `accept_path`.
        """
        ...

    def accept_path(self, nodes: list[int]) -> None:
        """After extend_tree: keep `nodes` (a path from a root, in order) as the cache's
        next positions, forget the other nodes (their keys and values are not recomputed)."""
        ...

    @property
    def cached_length(self) -> int:
        """Number of positions in the cache."""
        ...

    def fork(self) -> LanguageModel:
        """A runner over the same weights with its own empty cache (a drafter per sequence).
        ValueError when it cannot (the default)."""
        raise ValueError(f"model {self.name!r} cannot run a second cache")

    def warmup(self, capacity: int, rows: int = 1) -> float:
        """Compile every step width now, for caches of `capacity` positions and `rows` rows;
        returns the seconds compiling took. Default: nothing to compile."""
        return 0.0

    def prefill_from(self, other: LanguageModel, prompt_ids: torch.Tensor,
                     reserve: int = 0) -> bool:
        """Prefill by copying `other`'s cache when it holds exactly this prompt's prefix in a
        layout this model shares (a self drafter over the target's weights). False (nothing
        done, the caller prefills) where it cannot: the default."""
        return False


def vocabulary_of(model: LanguageModel) -> dict[str, int] | None:
    tokenizer = getattr(model, "tokenizer", None)
    return None if tokenizer is None else tokenizer.get_vocab()


def check_same_vocabulary(target: LanguageModel, drafter: LanguageModel) -> None:
    """Refuse a drafter whose token ids mean something else than the target's.

    Same vocabulary: the logits have the same width and, where both models have a
    tokenizer, their get_vocab() mappings are identical. Or the same tokenizer under logits
    of different widths (checkpoints pad their vocabulary differently: Qwen2.5-0.5B has
    151,936 logits, Qwen2.5-7B 152,064): identical get_vocab() mappings and every id the
    tokenizer can produce below both widths. The padded ids past the tokenizer mean nothing;
    ModelDrafter(drafter, target.vocab_size) drafts only the target's ids (`logits_at_width`).
    """
    target_vocab, drafter_vocab = vocabulary_of(target), vocabulary_of(drafter)
    known = target_vocab is not None and drafter_vocab is not None
    same = not known or target_vocab == drafter_vocab
    if target.vocab_size != drafter.vocab_size:
        same = known and same and _fits(target_vocab, min(target.vocab_size, drafter.vocab_size))
    if not same:
        raise VocabularyMismatchError(
            f"drafter {drafter.name!r} has a different vocabulary "
            f"({_describe(drafter, drafter_vocab)}) than target {target.name!r} "
            f"({_describe(target, target_vocab)}); a same-vocabulary model drafter needs "
            "identical token ids (the same tokenizer, its ids within both logits widths)"
        )


def _fits(vocab: dict[str, int] | None, width: int) -> bool:
    """Every id of `vocab` is below `width` (an empty vocabulary fits nothing)."""
    return bool(vocab) and max(vocab.values()) < width


def logits_at_width(logits: torch.Tensor, width: int) -> torch.Tensor:
    """Logits [..., V] brought to `width` columns: cut, or padded with -inf.

    A wider drafter's distribution is thereby restricted to the target's ids and
    renormalized before anything is sampled from it; a narrower one gives probability 0 to
    the ids it lacks. Exactness needs only that drafts are sampled from the q that
    verification sees, and the rule handles q = 0 where p > 0.
    """
    extra = width - logits.shape[-1]
    if extra < 0:
        return logits[..., :width]
    if extra > 0:
        pad = logits.new_full((*logits.shape[:-1], extra), float("-inf"))
        return torch.cat([logits, pad], dim=-1)
    return logits


def _describe(model: LanguageModel, vocab: dict[str, int] | None) -> str:
    tokens = "" if vocab is None else f"{len(vocab)} tokens, "
    return f"{tokens}{model.vocab_size} logits"
