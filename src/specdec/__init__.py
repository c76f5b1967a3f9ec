"""specdec: exact speculative decoding (Leviathan, Kalman & Matias, ICML 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specdec.constraint import Constraint
    from specdec.decoding import SpeculativeDecoder
    from specdec.sampling import SamplingParams

__version__ = "0.1.0"

__all__ = ["Constraint", "SamplingParams", "SpeculativeDecoder", "__version__"]


def __getattr__(name: str):
    # Both pull in torch; import them lazily so `import specdec` stays cheap (the Ray Serve
    # proxy imports specdec.server.replica_proxy and must start within Ray's 60 s).
    if name == "SpeculativeDecoder":
        from specdec.decoding import SpeculativeDecoder

        return SpeculativeDecoder
    if name == "SamplingParams":
        from specdec.sampling import SamplingParams

        return SamplingParams
    if name == "Constraint":
        from specdec.constraint import Constraint

        return Constraint
    raise AttributeError(name)
