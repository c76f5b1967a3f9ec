"""A low-bit view of a model: a new module tree over the same tensors, linears quantized.

Self-speculation drafts with the target's own weights. Copying the model (deepcopy) would
double its memory; instead every module is shallow-copied (same parameter and buffer tensors,
a new tree of submodules) and each nn.Linear is replaced by an Int8Linear / Int4Linear that
holds the low-bit weights plus a reference to the full-precision weight it came from. The
embedding, norms and rotary tables are the target's own tensors; the only new memory is the
low-bit weights (~1/4 or ~1/2 of the linears' bf16 size) and the drafter's own KV cache.

`VocabularySubsetHead` replaces the output head for drafting: logits for a subset of the
vocabulary only (a fixed low-bit part: the most frequent tokens; a growing full-precision part:
the tokens of the prompt and output so far). The drafter renormalises q over the subset and
maps the subset's indices back to token ids, so verification stays exact.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from specdec.runtime.linear import PackedLinear, StackedSlice, dense_linear, has_dense_weight
from specdec.runtime.quantize import quantized_linear

MAX_EXTRA_TOKENS = 8192  # bound on the head's growing part (distinct context tokens)


def shared_tree(module: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None],
                prefix: str = "") -> nn.Module:
    """A new module tree over module's tensors; replace(path, child) may substitute a child.

    Modules are shallow copies (their own dicts of submodules, parameters, buffers and hooks,
    so nothing done to the view reaches the original), tensors are shared, not copied.
    """
    view = object.__new__(type(module))
    view.__dict__.update(module.__dict__)
    for key, value in module.__dict__.items():
        if isinstance(value, dict):  # _parameters, _buffers, hooks: own dicts, same tensors
            view.__dict__[key] = type(value)(value)
    children = {}
    for name, child in module._modules.items():
        path = f"{prefix}{name}"
        if child is None:
            children[name] = None
            continue
        substitute = replace(path, child)
        children[name] = substitute if substitute is not None else \
            shared_tree(child, replace, path + ".")
    view.__dict__["_modules"] = children
    return view


def low_bit_view(model: nn.Module, bits: int | None, group_size: int = 32,
                 full_rows: int | None = 4,
                 head: nn.Module | None = None) -> nn.Module:
    """model's tree with its linears in `bits` bits; the output head replaced by `head` if given.

    bits None keeps the linears as they are (shared). Passes of more than `full_rows` rows
    (prefill) use the shared full-precision weights.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def replace(path: str, child: nn.Module) -> nn.Module | None:
        if child is output and head is not None:
            return head
        if bits is None:
            return None
        if isinstance(child, StackedSlice) and isinstance(child.stacked, PackedLinear):
            # q/k/v (gate/up) stay one product in low bits too: fewer, larger kernel calls
            low = _shared_low_bit(child.stacked, bits, group_size, full_rows)
            return StackedSlice(low, child.index)
        if has_dense_weight(child):  # reordered to dense once, when first quantized
            return _shared_low_bit(child, bits, group_size, full_rows)
        return None

    return shared_tree(model, replace)


# low-bit layers are stateless: views of one model at the same settings share them (a
# loaded model's weights do not change; one that is edited in place needs a fresh load)
_LOW_BIT: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int, int], nn.Module]] = \
    weakref.WeakKeyDictionary()


def _shared_low_bit(layer: nn.Module, bits: int, group_size: int,
                    full_rows: int | None) -> nn.Module:
    """The low-bit layer for `layer` (plain or packed: quantized from its dense weight, which
    is dropped after; `layer` itself runs the full-precision passes)."""
    made = _LOW_BIT.setdefault(layer, {})
    key = (bits, group_size, full_rows)
    if key not in made:
        made[key] = quantized_linear(dense_linear(layer), bits, group_size, full_rows, layer)
    return made[key]


class VocabularySubsetHead(nn.Module):
    """Logits for a vocabulary subset: a fixed part in low bits, plus tokens added later.

    Column j < `size` holds the logit of token `ids[j]`; the fixed part comes first. Tokens
    added with `add` (up to `max_extra`) get full-precision rows copied from the head they
    came from, into a buffer whose capacity doubles when full (a compiled step sees few
    shapes); its unused columns are -inf and lie past `size`. `reset()` drops the added ones.
    """

    def __init__(self, head: nn.Linear, fixed_ids: torch.Tensor, bits: int | None = 4,
                 group_size: int = 32, max_extra: int = MAX_EXTRA_TOKENS,
                 initial_capacity: int = 256):
        super().__init__()
        weight = head.weight.detach()
        self.vocab_size = int(weight.shape[0])
        fixed_ids = torch.unique(fixed_ids.long())  # sorted, once each
        if fixed_ids.numel() == 0 or fixed_ids.min() < 0 or fixed_ids.max() >= self.vocab_size:
            raise ValueError(f"subset ids must be a non-empty set in [0, {self.vocab_size})")
        self.register_buffer("full_weight", weight, persistent=False)  # the head's, shared
        self.full_bias = None if head.bias is None else head.bias.detach()
        rows = nn.Linear(weight.shape[1], len(fixed_ids), bias=head.bias is not None,
                         device="meta")
        rows.weight = nn.Parameter(weight[fixed_ids], requires_grad=False)
        if head.bias is not None:
            rows.bias = nn.Parameter(head.bias.detach()[fixed_ids], requires_grad=False)
        self.fixed = rows if bits is None else quantized_linear(rows, bits, group_size)
        self.fixed_ids = fixed_ids
        self.max_extra = max_extra
        capacity = max(1, min(initial_capacity, max_extra))
        # buffers, so a compiled step reads their current contents (they change in place)
        self.register_buffer("extra_weight", weight.new_zeros(capacity, weight.shape[1]),
                             persistent=False)
        self.register_buffer("extra_offset", torch.full((capacity,), float("-inf"),
                                                        dtype=weight.dtype), persistent=False)
        self.extra_ids: list[int] = []
        self.covered = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.reset()

    @property
    def size(self) -> int:
        """Number of valid logit columns (the fixed part and the added tokens)."""
        return len(self.fixed_ids) + len(self.extra_ids)

    @property
    def weight(self) -> torch.Tensor:
        """An [S, hidden]-shaped stand-in (no storage) for callers that read the width."""
        return self.full_weight.new_zeros(()).expand(self.size, self.full_weight.shape[1])

    @property
    def ids(self) -> torch.Tensor:
        """Token id of each valid logit column, [size]."""
        if self._ids is None:
            self._ids = torch.cat([self.fixed_ids, torch.tensor(self.extra_ids, dtype=torch.long)])
        return self._ids

    def reset(self) -> None:
        self._ids: torch.Tensor | None = None
        self.extra_ids = []
        self.extra_offset.fill_(float("-inf"))
        self.covered.zero_()
        self.covered[self.fixed_ids] = True

    def add(self, tokens: Iterable[int]) -> int:
        """Cover these tokens too (those not covered yet, within the bound); returns how many."""
        fresh = []
        for token in dict.fromkeys(int(t) for t in tokens):
            if 0 <= token < self.vocab_size and not self.covered[token] and \
                    len(self.extra_ids) + len(fresh) < self.max_extra:
                fresh.append(token)
        if not fresh:
            return 0
        start, end = len(self.extra_ids), len(self.extra_ids) + len(fresh)
        if end > self.extra_weight.shape[0]:
            self._grow(end)
        index = torch.tensor(fresh, dtype=torch.long)
        self.extra_weight[start:end] = self.full_weight[index]
        self.extra_offset[start:end] = 0 if self.full_bias is None else self.full_bias[index]
        self.covered[index] = True
        self.extra_ids.extend(fresh)
        self._ids = None
        return len(fresh)

    def _grow(self, needed: int) -> None:
        capacity = self.extra_weight.shape[0]
        while capacity < needed:
            capacity *= 2
        weight = self.extra_weight.new_zeros(capacity, self.extra_weight.shape[1])
        offset = self.extra_offset.new_full((capacity,), float("-inf"))
        used = len(self.extra_ids)
        weight[:used], offset[:used] = self.extra_weight[:used], self.extra_offset[:used]
        self.extra_weight, self.extra_offset = weight, offset

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.fixed(hidden)
        extra = F.linear(hidden.to(self.extra_weight.dtype), self.extra_weight) + \
            self.extra_offset
        return torch.cat([logits, extra.to(logits.dtype)], dim=-1)


def frequent_token_ids(vocab_size: int, count: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The `count` lowest ids plus `always` (special and end tokens), as a sorted id tensor.

    A byte-level BPE vocabulary numbers its tokens in merge order, and merges were made from
    the most frequent pairs of the tokenizer's training corpus first: low ids are the frequent
    tokens, so the first ids stand in for counting a corpus (no corpus needed at run time).
    """
    if count < 1:
        raise ValueError(f"a vocabulary subset needs at least 1 token, got {count}")
    ids = set(range(min(count, vocab_size)))
    ids.update(int(t) for t in always if 0 <= int(t) < vocab_size)
    return torch.tensor(sorted(ids), dtype=torch.long)


def low_bit_target(target: Any, bits: int, group_size: int = 32) -> Any:
    """`target` (a runner over a transformers model) with every linear layer in `bits` bits
    for every pass, the output head too: a smaller, different model (its output is not the
    full-precision model's), for measuring what a low-bit target buys. Shares the target's
    embedding and norms; the target's own layers stay as they are."""
    from specdec.runtime.wrap import wrap

    view = low_bit_view(target.model, bits, group_size, full_rows=None)
    return wrap(view, target.tokenizer, f"{target.name}@int{bits}")
