"""Pack a llama-family decoder's linear layers in place: q/k/v and gate/up stacked, the rest
one packed product each, the output head too; single rows padded where they round apart.

The tree keeps working for any caller (each stacked layer is replaced by a `StackedSlice`), and
packing a packed tree does nothing, so a fork or a second runner over the same model shares
the packed weights. Only plain `nn.Linear` layers are packed: quantized layers (a self
drafter's view) stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from specdec.runtime.linear import (
    PackedLinear,
    RowProbe,
    StackedSlice,
    dense_linear,
    onednn_packing_available,
)

Parts = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass
class PackReport:
    """What packing did: layers packed, and how products treat row counts here."""

    packed: int = 0
    skipped: str | None = None  # why nothing was packed
    probes: dict[tuple[int, int], RowProbe] = field(default_factory=dict)  # (in, out) shape

    @property
    def padded_shapes(self) -> list[tuple[int, int]]:
        return [shape for shape, p in self.probes.items() if p.single_row_differs]

    @property
    def row_invariant(self) -> bool:
        """Every packed product gives the same bits for every row count (after padding)."""
        return all(p.invariant for p in self.probes.values())


def pack_decoder(model: nn.Module) -> PackReport:
    """Pack `model`'s plain linear layers (a transformers llama-family causal LM) in place."""
    head = model.get_output_embeddings()
    weight = model.model.embed_tokens.weight
    why = onednn_packing_available(weight.dtype, weight.device)
    if why is not None:
        return PackReport(skipped=why)
    report = PackReport()
    probes: dict[tuple[int, int, tuple[int, ...]], RowProbe] = {}

    def probed(layer: PackedLinear) -> PackedLinear:
        key = (layer.in_features, layer.out_features, layer.splits)
        if key in probes:  # the same shape: the same kernels
            layer.probe = probes[key]
            layer.pad_single_row = layer.probe.single_row_differs
        else:
            probes[key] = layer.probe_rows()
            report.probes[(layer.in_features, layer.out_features)] = probes[key]
        report.packed += len(layer.splits)
        return layer

    for block in model.model.layers:
        _stack(block.self_attn, ("q_proj", "k_proj", "v_proj"), probed)
        _stack(block.self_attn, ("o_proj",), probed)
        mlp = block.mlp
        if _plain(mlp, ("gate_proj", "up_proj", "down_proj")):
            _stack(mlp, ("gate_proj", "up_proj"), probed)
            _stack(mlp, ("down_proj",), probed)
    if type(head) is nn.Linear:
        model.set_output_embeddings(probed(PackedLinear(head.weight, head.bias)))
    return report


def unpack_decoder(model: nn.Module) -> None:
    """Undo pack_decoder in place: plain nn.Linear layers with dense weights again (each
    layer back at its place in the tree, so parameter order is as before packing)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StackedSlice | PackedLinear):
                setattr(parent, name, dense_linear(child))


def _plain(parent: nn.Module, names: tuple[str, ...]) -> bool:
    return all(type(getattr(parent, name, None)) is nn.Linear for name in names)


def _stack(parent: nn.Module, names: tuple[str, ...],
           probed: Callable[[PackedLinear], PackedLinear]) -> None:
    """Replace parent's plain linears `names` by slices of one packed product."""
    if not _plain(parent, names):
        return
    linears = [getattr(parent, name) for name in names]
    stacked = probed(PackedLinear.stack(linears))
    for index, name in enumerate(names):
        setattr(parent, name, StackedSlice(stacked, index))


def stacked_parts(parent: nn.Module, names: tuple[str, ...]) -> Parts:
    """One call computing parent's layers `names` on the same input: the stacked product when
    they are slices of one, else each layer in turn (quantized or unpacked layers)."""
    layers = [getattr(parent, name) for name in names]
    first = layers[0]
    if isinstance(first, StackedSlice) and len(first.stacked.splits) == len(layers) and \
            all(isinstance(m, StackedSlice) and m.stacked is first.stacked and m.index == i
                for i, m in enumerate(layers)):
        return first.stacked.parts
    return lambda x: tuple(layer(x) for layer in layers)


def single(parent: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """parent's layer `name` as a callable (a packed slice's own product when it stands
    alone)."""
    layer = getattr(parent, name)
    if isinstance(layer, StackedSlice) and len(layer.stacked.splits) == 1:
        return layer.stacked
    return layer
