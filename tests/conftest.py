import sys
from pathlib import Path

import pytest
import torch

# tests import their helpers (tiny.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))

# tiny models: thread start-up costs more than the arithmetic, and CI has 2 cores
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_model_cache(request, tmp_path_factory, monkeypatch):
    """A fresh model cache per test: converted copies of test GGUFs never reach the user's
    cache, and no test sees another's. Tests marked `real` use the real cache (fetched models).
    """
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path_factory.mktemp("specdec-cache")))
