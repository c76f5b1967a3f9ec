"""specdec: exact speculative decoding (Leviathan, Kalman & Matias, ICML 2023)."""

from specdec.sampling import SamplingParams

__version__ = "0.1.0"

__all__ = ["SamplingParams", "SpeculativeDecoder", "__version__"]


def __getattr__(name: str):
    # The decoder pulls in torch-heavy modules; import it lazily so `import specdec` stays cheap.
    if name == "SpeculativeDecoder":
        from specdec.decoding import SpeculativeDecoder

        return SpeculativeDecoder
    raise AttributeError(name)
