import sys
from pathlib import Path

import torch

# tests import their helpers (tiny.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))

# tiny models: thread start-up costs more than the arithmetic, and CI has 2 cores
torch.set_num_threads(1)
