"""Linear layers prepacked once for oneDNN, fused where one input feeds several products.

`F.linear` on the CPU hands oneDNN a weight in PyTorch's layout, and oneDNN re-lays it out on
every call: a one-token step streams weights far below the memory bandwidth, and a k-token
step pays the copy again. Packing each weight once (`mkldnn._reorder_linear_weight`, what
inductor's freezing does) and multiplying with `mkldnn._linear_pointwise` removes the copy.
The dense weight is dropped after packing; `dense_weight()` reorders it back exactly when a
caller needs it (quantizing a self drafter).

One numerics for every block width: a packed product computes each row the same way for any
row count from 2 up, but oneDNN may take a different kernel for a single row that rounds
differently (seen on the 4,864-input down projection in bf16). `probe_rows` checks a layer's
own weight once; where one row differs it is padded to two, so row r of any forward is the
same bits as that token's one-token forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

PACKED_DTYPES = (torch.bfloat16, torch.float32)
PROBE_ROWS = 16  # row counts 1..PROBE_ROWS are checked against a PROBE_ROWS-row product
# bf16 outputs hide most accumulation-order differences (8 mantissa bits), so one row alone
# is compared with its row of a batch for up to this many different inputs, fewer for large
# layers (an output head), within a budget of multiply-adds that keeps loading quick
PROBE_SINGLE_ROWS = 64
PROBE_MIN_SINGLE_ROWS = 8
PROBE_BUDGET = 1 << 30


def cpu_supports_bfloat16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); emulated bf16 is slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def onednn_packing_available(dtype: torch.dtype, device: torch.device) -> str | None:
    """None when weights of `dtype` on `device` can be prepacked here, else why not."""
    if device.type != "cpu":
        return f"device {device.type}: prepacking is oneDNN's CPU path"
    if dtype not in PACKED_DTYPES:
        return f"dtype {dtype}: oneDNN packing here covers bfloat16 and float32"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if dtype == torch.bfloat16 and not cpu_supports_bfloat16():
        return "this CPU has no native bfloat16 (AVX512-BF16 or AMX)"
    return None


@dataclass
class RowProbe:
    """How a packed product treats row counts on this machine, for one layer shape."""

    single_row_differs: bool = False  # 1 row rounds unlike >= 2 rows: pad it to 2
    varying_rows: list[int] = field(default_factory=list)  # counts >= 2 that differ

    @property
    def invariant(self) -> bool:
        """Every row count gives the same bits (with the single row padded when needed)."""
        return not self.varying_rows


class PackedLinear(nn.Module):
    """y = x W^T (+ b), W prepacked for oneDNN; several layers' weights stacked as one.

    `splits` are the output widths of the stacked layers (q, k, v or gate, up): `parts(x)`
    returns one tensor each from a single product.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 splits: Sequence[int] | None = None):
        super().__init__()
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.dtype = weight.dtype
        self.splits = tuple(splits) if splits is not None else (self.out_features,)
        if sum(self.splits) != self.out_features:
            raise ValueError(f"splits {self.splits} do not add up to {self.out_features}")
        # plain attributes, not parameters: module machinery (state_dict, .to) must not
        # touch an opaque oneDNN tensor
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(),
                                                             None)
        self.bias_tensor = None if bias is None else bias.detach().to(weight.dtype).clone()
        self.pad_single_row = False
        self.probe = RowProbe()

    @classmethod
    def stack(cls, linears: Sequence[nn.Linear]) -> PackedLinear:
        """One packed product for layers that read the same input."""
        weight = torch.cat([layer.weight.detach() for layer in linears])
        biases = [layer.bias for layer in linears]
        if all(b is None for b in biases):
            bias = None
        else:
            bias = torch.cat([b.detach() if b is not None else
                              layer.weight.new_zeros(layer.out_features)
                              for b, layer in zip(biases, linears, strict=True)])
        return cls(weight, bias, [layer.out_features for layer in linears])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.dtype:
            flat = flat.to(self.dtype)
        single = flat.shape[0] == 1 and self.pad_single_row
        if single:  # the >= 2-row kernel, so one token rounds like any block
            flat = flat.expand(2, -1)
        out = torch.ops.mkldnn._linear_pointwise(flat.contiguous(), self.packed,
                                                 self.bias_tensor, "none", [], "")
        if single:
            out = out[:1]
        return out.reshape(*x.shape[:-1], self.out_features)

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        """A copy packed from the dense weight (an opaque oneDNN tensor has no storage to
        copy), with the same row treatment."""
        copy = PackedLinear(self.dense_weight(), self.bias_tensor, self.splits)
        copy.probe, copy.pad_single_row = self.probe, self.pad_single_row
        return copy

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(self(x), self.splits, dim=-1)

    def dense_weight(self) -> torch.Tensor:
        """The weight [out, in] in PyTorch's layout, bit for bit (a new tensor)."""
        return self.packed.to_dense()

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, reordered from the packed one on each read (for callers that
        copy rows or read shapes once, never per step)."""
        return self.dense_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.bias_tensor

    def probe_rows(self, seed: int = 0) -> RowProbe:
        """Compare products of 1..PROBE_ROWS rows with the same rows of one larger product
        (random inputs; single rows over PROBE_SINGLE_ROWS inputs); pad single rows when they
        differ."""
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(PROBE_SINGLE_ROWS, self.in_features, generator=generator)
        x = x.to(self.dtype)
        singles = PROBE_BUDGET // (self.in_features * self.out_features)
        singles = max(PROBE_MIN_SINGLE_ROWS, min(PROBE_SINGLE_ROWS, singles))
        self.pad_single_row = False
        with torch.inference_mode():
            full = self(x)
            single = any(not torch.equal(self(x[i:i + 1]), full[i:i + 1])
                         for i in range(singles))
            varying = [m for m in range(2, PROBE_ROWS + 1)
                       if not torch.equal(self(x[:m]), full[:m])]
        self.probe = RowProbe(single_row_differs=single, varying_rows=varying)
        self.pad_single_row = self.probe.single_row_differs
        return self.probe

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"splits={self.splits}, dtype={self.dtype}, pad_single_row={self.pad_single_row}")


class StackedSlice(nn.Module):
    """One layer's columns of a stacked layer (a PackedLinear, or a low-bit layer quantized
    from one), where the model tree had that layer.

    The static runner calls the stacked product once; this stand-in keeps the tree usable by
    code that calls or reads the original layer (transformers' forward, quantizing a view).
    """

    def __init__(self, stacked: nn.Module, index: int):
        super().__init__()
        object.__setattr__(self, "stacked", stacked)  # shared, not a registered child
        self.index = index
        self.start = sum(stacked.splits[:index])
        self.in_features = stacked.in_features
        self.out_features = stacked.splits[index]

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self.stacked.bias_tensor
        return None if bias is None else bias[self.start:self.start + self.out_features]

    @property
    def weight(self) -> torch.Tensor:
        """This layer's rows of the stacked weight (a packed one reordered to dense on each
        read; a low-bit one's stand-in)."""
        return self.stacked.weight[self.start:self.start + self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stacked.parts(x)[self.index]


def has_dense_weight(module: nn.Module) -> bool:
    """A plain linear layer, or a packed one (whose dense weight can be reordered back); not a
    quantized layer or a subset head."""
    return type(module) is nn.Linear or isinstance(module, PackedLinear) or \
        (isinstance(module, StackedSlice) and isinstance(module.stacked, PackedLinear))


def dense_linear(module: nn.Module) -> nn.Linear | None:
    """`module` as an nn.Linear with a dense weight (a packed one reordered back), or None
    when it is no plain linear layer (a quantized one, a subset head)."""
    if type(module) is nn.Linear:
        return module
    if has_dense_weight(module):
        weight, bias = module.weight, module.bias
        linear = nn.Linear(module.in_features, module.out_features, bias=bias is not None,
                           device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=False)
        return linear
    return None
