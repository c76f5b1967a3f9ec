"""Install metadata: ranges that live beside any torch; README's setup is what CI runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SETUP = 'python3 -m pip install torch==2.13.0 -e ".[dev]"'


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["dependencies"])}


def test_torch_is_a_range_that_keeps_an_installed_cuda_build():
    torch = requirements()["torch"].specifier
    assert not any(spec.operator in ("==", "===") for spec in torch)
    # the CPU build CI installs, the CUDA build on the GPU machine, a newer CUDA build
    for version in ("2.13.0", "2.13.0+cpu", "2.11.0+cu130", "2.14.1"):
        assert torch.contains(Version(version), prereleases=False), version
    assert not torch.contains("1.13.1")


def test_transformers_lower_bound_is_the_oldest_tested_release():
    transformers = requirements()["transformers"].specifier
    assert transformers.contains("5.17.0") and transformers.contains("5.24.0")
    assert not transformers.contains("4.57.0") and not transformers.contains("6.0.0")


def test_readme_setup_is_the_cpu_pin_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert SETUP in readme
    ci = ROOT / ".ci" / "run"
    if ci.exists():  # not shipped in an sdist
        assert SETUP in ci.read_text()
